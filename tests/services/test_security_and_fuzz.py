"""The servers against hostile callers: TLS only, tokens per party, and a fuzz of 1,000+ bad messages.

Both servers run in this process (real gRPC over TLS on loopback), so the test can look at their state
after the onslaught: every bad message must get an error status and leave that state untouched.
"""

import random
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch

from splitfed.errors import SplitfedError
from splitfed.services import splitfed_pb2 as pb
from splitfed.services import splitfed_pb2_grpc as pb_grpc
from splitfed.services._common import dial, run_identity, serve
from splitfed.services.client import Client
from splitfed.services.fed_server import FedServer
from splitfed.services.main_server import MainServer
from splitfed.services.security import call_metadata, read_token
from splitfed.services.wire import encode, header
from splitfed.setup import prepare

from .harness import deployment, tiny_config

C = grpc.StatusCode


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    config = tiny_config(tmp, clients=3)
    _, config, deploy = deployment(tmp, config)
    setup = prepare(config)
    main = MainServer(setup, deploy)
    fed = FedServer(setup, deploy)
    grpc_main = serve(
        deploy, deploy.main_server, 16, lambda s: pb_grpc.add_MainServerServicer_to_server(main, s)
    )
    grpc_fed = serve(deploy, deploy.fed_server, 16, lambda s: pb_grpc.add_FedServerServicer_to_server(fed, s))
    tokens = {
        name: read_token(deploy.token_file(name))
        for name in ("client:0", "client:1", "client:2", "fed_server")
    }
    run = run_identity(setup.cfg)  # what every call of this deployment's parties carries
    yield {"main": main, "fed": fed, "deploy": deploy, "setup": setup, "tokens": tokens, "run": run}
    grpc_main.stop(None)
    grpc_fed.stop(None)


def snapshot(s):
    main, fed = s["main"], s["fed"]
    return (
        main.round,
        main.pos,
        dict(main.arrived),
        dict(main.last),
        main.sides["server"].state(0).params.clone(),
        fed.round,
        dict(fed.uploads),
        fed.model["client"].params.clone(),
        len(fed.history),
    )


def assert_unchanged(before, after):
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def good_step(s, client=0, r=1, t=1, **changes):
    """The parts of a valid Step message of ``client``; changes override them."""
    messages = s["main"].messages
    b = messages.batch_sizes[client]
    parts = {
        "header": header(client=client, round=r, iteration=t),
        "smashed": torch.randn(b, *smashed_shape(messages)),
        "labels": torch.randint(0, messages.num_classes, (b,)),
    }
    return parts | changes


def smashed_shape(messages):
    """The smashed data's shape after the batch, from the messages the algorithm was traced sending."""
    return messages.trace.phases[0][0]["smashed"][1]


def step_frames(parts):
    tensors = {k: v for k, v in parts.items() if k != "header"}
    return list(encode(parts["header"], tensors))


def test_a_plaintext_connection_is_refused(servers):
    channel = grpc.insecure_channel(servers["deploy"].main_server)
    stub = pb_grpc.MainServerStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.ServerWeights(header(round=1), timeout=5))  # a stream: the call happens on reading
    assert e.value.code() == C.UNAVAILABLE


def test_callers_are_authenticated_and_may_speak_only_for_themselves(servers):
    deploy, tokens = servers["deploy"], servers["tokens"]
    main = pb_grpc.MainServerStub(dial(deploy, deploy.main_server))
    fed = pb_grpc.FedServerStub(dial(deploy, deploy.fed_server))
    cases = [
        (
            lambda md: list(fed.GlobalClientWeights(header(client=0, round=1), metadata=md, timeout=5)),
            (),
            C.UNAUTHENTICATED,
        ),
        (
            lambda md: list(fed.GlobalClientWeights(header(client=0, round=1), metadata=md, timeout=5)),
            call_metadata("client:0", "not-the-token", servers["run"]),
            C.UNAUTHENTICATED,
        ),
        (
            lambda md: list(fed.GlobalClientWeights(header(client=0, round=1), metadata=md, timeout=5)),
            call_metadata("client:7", tokens["client:0"], servers["run"]),
            C.UNAUTHENTICATED,
        ),
        (
            lambda md: list(fed.GlobalClientWeights(header(client=1, round=1), metadata=md, timeout=5)),
            call_metadata("client:0", tokens["client:0"], servers["run"]),
            C.PERMISSION_DENIED,
        ),
        (
            lambda md: list(
                main.Step(iter(step_frames(good_step(servers, client=1))), metadata=md, timeout=5)
            ),
            call_metadata("client:0", tokens["client:0"], servers["run"]),
            C.PERMISSION_DENIED,
        ),
        (
            lambda md: list(main.ServerWeights(header(round=1), metadata=md, timeout=5)),
            call_metadata("client:0", tokens["client:0"], servers["run"]),
            C.PERMISSION_DENIED,
        ),
    ]
    for call, metadata, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            call(metadata)
        assert e.value.code() == code, e.value.details()
    # the legitimate call works
    frames = list(
        fed.GlobalClientWeights(
            header(client=0, round=1),
            metadata=call_metadata("client:0", tokens["client:0"], servers["run"]),
            timeout=5,
        )
    )
    assert frames[0].header.round == 1 and frames[0].header.status == "ok"


def test_a_party_started_with_another_config_is_refused_naming_what_differs(servers, caplog):
    """A client (or server) whose config file says another lr or seed would train on and mix its numbers
    into the run: both servers refuse its calls before reading them, naming the fields, and log it."""
    deploy, tokens, setup = servers["deploy"], servers["tokens"], servers["setup"]
    main = pb_grpc.MainServerStub(dial(deploy, deploy.main_server))
    fed = pb_grpc.FedServerStub(dial(deploy, deploy.fed_server))
    before = snapshot(servers)
    others = {
        "lr": run_identity(setup.cfg.replace(lr=setup.cfg.lr * 2)),
        "seed": run_identity(setup.cfg.replace(seed=setup.cfg.seed + 1)),
        "did not say": "",
        "did not say ": "{not json",
    }
    for field, run in others.items():
        md = call_metadata("client:0", tokens["client:0"], run)
        calls = [
            lambda md=md: list(fed.GlobalClientWeights(header(client=0, round=1), metadata=md, timeout=5)),
            lambda md=md: list(main.Step(iter(step_frames(good_step(servers))), metadata=md, timeout=5)),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == C.PERMISSION_DENIED, e.value.details()
            assert field.strip() in e.value.details() and "same config" in e.value.details()
    assert "refused client:0 was started with another config than the main server (lr = " in caplog.text
    assert_unchanged(before, snapshot(servers))
    # a machine-only difference (device, threads, output) is the same run
    same = run_identity(setup.cfg.replace(threads=2, out="elsewhere", figures=False, model_every=3))
    frames = list(
        fed.GlobalClientWeights(
            header(client=0, round=1), metadata=call_metadata("client:0", tokens["client:0"], same), timeout=5
        )
    )
    assert frames[0].header.status == "ok"


def test_an_upload_is_taken_only_from_a_client_handed_that_rounds_model(servers):
    """A round-1 upload with client 2's valid token, before client 2 fetched round 1's model (a copied
    token, a stray process), would take the real client's place: it is refused, and the real client, asking
    for round 2 as if it had uploaded, is handed round 1's model instead of being told to resend."""
    deploy, tokens, setup = servers["deploy"], servers["tokens"], servers["setup"]
    fed = pb_grpc.FedServerStub(dial(deploy, deploy.fed_server))
    client2 = call_metadata("client:2", tokens["client:2"], servers["run"])
    good = {f"client.{k}": v.cpu() for k, v in setup.init_c.to_dict().items()}
    before = snapshot(servers)
    with pytest.raises(grpc.RpcError) as e:
        fed.UploadClientWeights(
            encode(header(client=2, round=1, info={"samples": 16.0}), good), metadata=client2, timeout=10
        )
    assert e.value.code() == C.FAILED_PRECONDITION
    assert e.value.details() == "client 2 was not handed round 1's model: no upload of that round"
    assert_unchanged(before, snapshot(servers))
    frames = list(fed.GlobalClientWeights(header(client=2, round=2), metadata=client2, timeout=5))
    assert (frames[0].header.status, frames[0].header.round) == ("ok", 1)


def test_a_second_process_with_one_client_id_is_refused_and_a_restart_after_a_crash_is_not(servers):
    """Two live ``splitfed client --id 1`` would each be taken for the other's restart (client 1 dropped,
    the numbers changed): the second is refused at once; a restart after a SIGKILL is not."""
    setup, deploy = servers["setup"], servers["deploy"]
    lock = Path(deploy.state_dir) / "client_1.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SplitfedError) as e:
            Client(setup, deploy, 1)
        assert str(e.value) == (
            f"client 1 is running already (process {holder.pid} holds {lock}): one process per id; stop "
            "that one first, or give this one another id"
        )
    finally:
        holder.kill()  # SIGKILL: the kernel lets go of the lock
        holder.wait()
    first = Client(setup, deploy, 1)
    with pytest.raises(SplitfedError, match="client 1 is running already"):
        Client(setup, deploy, 1)
    first.lock.close()  # the process ended
    Client(setup, deploy, 1).lock.close()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from splitfed.services._common import hold_lock
f = hold_lock(Path(sys.argv[1]), "client 1")
print("held", flush=True)
time.sleep(600)
"""


def hostile_messages(s, rng: random.Random):
    """(name, rpc, payload, metadata identity, allowed status codes): a thousand ways to be wrong."""
    messages = s["main"].messages
    b = messages.batch_sizes[0]
    d = smashed_shape(messages)
    nan = torch.randn(b, *d)
    nan.view(-1)[rng.randrange(nan.numel())] = float(rng.choice(["nan", "inf", "-inf"]))
    kinds = {
        "nan smashed": lambda: step_frames(good_step(s, smashed=nan)),
        "wrong batch": lambda: step_frames(
            good_step(
                s, smashed=torch.randn(b + rng.randint(1, 5), *d), labels=torch.zeros(b, dtype=torch.long)
            )
        ),
        "wrong shape": lambda: step_frames(
            good_step(s, smashed=torch.randn(b, *[x + rng.randint(1, 3) for x in d]))
        ),
        "extra dim": lambda: step_frames(good_step(s, smashed=torch.randn(b, 1, *d))),
        "float64": lambda: _retag(step_frames(good_step(s)), "smashed", dtype="float64"),
        "bogus dtype": lambda: _retag(
            step_frames(good_step(s)), "smashed", dtype=rng.choice(["", "int8", "x", "f4"])
        ),
        "int labels as float": lambda: step_frames(good_step(s, labels=torch.zeros(b))),
        "labels out of range": lambda: step_frames(
            good_step(s, labels=torch.full((b,), rng.choice([-1, 10, 99])))
        ),
        "missing labels": lambda: list(
            encode(header(client=0, round=1, iteration=1), {"smashed": torch.randn(b, *d)})
        ),
        "extra tensor": lambda: step_frames(good_step(s, extra=torch.zeros(1))),
        "lying shape": lambda: _retag(step_frames(good_step(s)), "smashed", shape=[b, *[x * 2 for x in d]]),
        "negative shape": lambda: _retag(step_frames(good_step(s)), "smashed", shape=[-b, *d]),
        "truncated data": lambda: _truncate(step_frames(good_step(s)), rng),
        "trailing bytes": lambda: _append(step_frames(good_step(s)), rng),
        "no header": lambda: [pb.Frame(data=bytes(rng.randrange(256) for _ in range(64)))],
        "two headers": lambda: (
            [*step_frames(good_step(s)), pb.Frame(header=header(client=0, round=1), data=b"")]
        ),
        "empty stream": lambda: [],
        "huge": lambda: [
            pb.Frame(header=header(client=0, round=1, iteration=1), data=b"\0" * 2**20) for _ in range(2)
        ],
        "old round": lambda: step_frames(good_step(s, header=header(client=0, round=0, iteration=1))),
        "future round": lambda: step_frames(
            good_step(s, header=header(client=0, round=rng.randint(2, 99), iteration=1))
        ),
        "future iteration": lambda: step_frames(
            good_step(s, header=header(client=0, round=1, iteration=rng.randint(2, 99)))
        ),
        "negative iteration": lambda: step_frames(
            good_step(s, header=header(client=0, round=1, iteration=-rng.randint(0, 9)))
        ),
        "random bytes tensor": lambda: _garble(step_frames(good_step(s)), rng),
    }
    codes = {
        "old round": {C.FAILED_PRECONDITION},
        "future round": {C.DATA_LOSS},  # a client cannot be a round ahead of the main server
        "future iteration": {C.ABORTED},
        "negative iteration": {C.ABORTED},
        "huge": {C.RESOURCE_EXHAUSTED},
    }
    for i in range(1100):
        name = rng.choice(list(kinds))
        yield name, kinds[name](), codes.get(name, {C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED})
        if i % 50 == 0:  # and now and then, someone without a token or speaking for another client
            yield "no token", step_frames(good_step(s)), {C.UNAUTHENTICATED}


def _retag(frames, name, **fields):
    for t in frames[0].header.tensors:
        if t.name == name:
            for k, v in fields.items():
                if k == "shape":
                    del t.shape[:]
                    t.shape.extend(v)
                else:
                    setattr(t, k, v)
    return frames


def _truncate(frames, rng):
    frames[-1].data = frames[-1].data[: -rng.randint(1, 64)]
    return frames


def _append(frames, rng):
    frames[-1].data += bytes(rng.randint(1, 16))
    return frames


def _garble(frames, rng):
    """Overwrite some float32 exponents of the smashed data with all ones: NaN or infinity."""
    data = bytearray(frames[0].data)
    count = frames[0].header.tensors[0].shape[0]  # smashed comes first: b x ... floats
    for _ in range(rng.randint(1, 8)):
        k = 4 * rng.randrange(count)
        data[k + 2] |= 0x80
        data[k + 3] |= 0x7F
    frames[0].data = bytes(data)
    return frames


def test_a_thousand_hostile_messages_leave_the_servers_up_and_unchanged(servers):
    deploy, tokens = servers["deploy"], servers["tokens"]
    main = pb_grpc.MainServerStub(dial(deploy, deploy.main_server))
    fed = pb_grpc.FedServerStub(dial(deploy, deploy.fed_server))
    client0 = call_metadata("client:0", tokens["client:0"], servers["run"])
    before = snapshot(servers)
    rng = random.Random(0)
    count = 0
    for name, frames, allowed in hostile_messages(servers, rng):
        metadata = () if name == "no token" else client0
        with pytest.raises(grpc.RpcError) as e:
            list(main.Step(iter(frames), metadata=metadata, timeout=10))
        assert e.value.code() in allowed, (name, e.value.code(), e.value.details())
        assert e.value.details(), name  # a message saying what was wrong
        count += 1
    # the fed server: uploads that are malformed, from the future, or of the wrong size
    setup = servers["setup"]
    good = {f"client.{k}": v.cpu() for k, v in setup.init_c.to_dict().items()}
    uploads = {
        "nan": ({**good, "client.params": good["client.params"] * float("nan")}, 1, {C.INVALID_ARGUMENT}),
        "short": ({**good, "client.params": good["client.params"][:-1]}, 1, {C.INVALID_ARGUMENT}),
        "missing": ({k: v for k, v in good.items() if k != "client.buffers"}, 1, {C.INVALID_ARGUMENT}),
        "future round": (good, 5, {C.FAILED_PRECONDITION}),
    }
    for _ in range(30):
        for name, (tensors, r, allowed) in uploads.items():
            with pytest.raises(grpc.RpcError) as e:
                fed.UploadClientWeights(
                    encode(header(client=0, round=r, info={"samples": 16.0}), dict(tensors)),
                    metadata=client0,
                    timeout=10,
                )
            assert e.value.code() in allowed, (name, e.value.details())
            count += 1
        with pytest.raises(grpc.RpcError) as e:
            list(fed.GlobalClientWeights(header(client=0, round=-3), metadata=client0, timeout=10))
        assert e.value.code() == C.INVALID_ARGUMENT
        count += 1
        # without a token: refused before a byte of the message is read, so nothing is learned of it
        for tensors, r, _ in uploads.values():
            with pytest.raises(grpc.RpcError) as e:
                fed.UploadClientWeights(encode(header(client=0, round=r), dict(tensors)), timeout=10)
            assert e.value.code() == C.UNAUTHENTICATED, e.value.details()
            count += 1
        with pytest.raises(grpc.RpcError) as e:
            list(main.Step(iter(step_frames(good_step(servers, smashed=torch.zeros(1)))), timeout=10))
        assert e.value.code() == C.UNAUTHENTICATED
        count += 1
    # bytes that are not even a protobuf message
    raw = dial(deploy, deploy.main_server).stream_stream("/splitfed.v1.MainServer/Step")
    for _ in range(20):
        with pytest.raises(grpc.RpcError) as e:
            list(
                raw(
                    iter([bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))]),
                    metadata=client0,
                    timeout=10,
                )
            )
        assert e.value.code() != C.OK
        count += 1
    assert count >= 1000
    assert_unchanged(before, snapshot(servers))
    # still up: a legitimate call is served
    frames = list(fed.GlobalClientWeights(header(client=0, round=1), metadata=client0, timeout=5))
    assert frames[0].header.status == "ok"


def test_a_second_server_on_a_port_in_use_is_refused_not_given_half_the_calls(servers):
    """gRPC binds with SO_REUSEPORT by default: a second server on the same port would take a share of
    the first one's calls ("Method not found" for a fed server's call that reached the main server)."""
    from splitfed.errors import SplitfedError as Refused

    deploy = servers["deploy"]
    with pytest.raises(Refused, match=r"cannot listen on .*port in use"):
        serve(deploy, deploy.main_server, 2, lambda s: None)
