"""A client whose call is refused for good stops with one line naming the call and the status (UNKNOWN
included: a server that failed while handling it), never a gRPC stack trace; an upload refused because
the client is out of the round is not an error: it rejoins the next round."""

import grpc
import pytest
import torch

from splitfed.errors import SplitfedError
from splitfed.services._common import Caller
from splitfed.services.client import Client


class Refusal(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class RefusingFedServer:
    def __init__(self, error: Refusal) -> None:
        self.error = error

    def UploadClientWeights(self, frames, **kw):
        raise self.error

    def GlobalClientWeights(self, request, **kw):
        raise self.error


def client_facing(error: Refusal) -> Client:
    client = Client.__new__(Client)  # only what the calls below read
    client.n = 3
    client.call = Caller("client-3", "token", retry_s=1.0)
    client.fed = RefusingFedServer(error)
    return client


TENSORS = {"client.w": torch.zeros(2)}


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED]
)
def test_a_refused_upload_is_one_line_naming_the_round_and_the_status(code):
    client = client_facing(Refusal(code, "Exception calling application: boom"))
    with pytest.raises(SplitfedError) as e:
        client._send_upload(2, TENSORS, {})
    message = str(e.value)
    assert "\n" not in message
    assert "client 3" in message and "upload of round 2" in message and code.name in message
    assert "boom" in message


def test_an_upload_refused_because_the_client_is_out_of_the_round_is_not_an_error():
    client = client_facing(Refusal(grpc.StatusCode.FAILED_PRECONDITION, "client 3 is out of round 2"))
    assert client._send_upload(2, TENSORS, {}) is None


def test_a_refused_fetch_of_the_global_model_is_one_line():
    client = client_facing(Refusal(grpc.StatusCode.PERMISSION_DENIED, "client-0 may not speak for client 3"))
    expected = r"client 3: the fed server refused the model of round 4: PERMISSION_DENIED"
    with pytest.raises(SplitfedError, match=expected):
        client._global_weights(4, False)
