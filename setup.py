"""Builds the gRPC code from src/splitfed/services/splitfed.proto at install time (never hand-written)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def generate_grpc() -> None:
    from grpc_tools import protoc

    services = Path(__file__).parent / "src" / "splitfed" / "services"
    args = [
        "protoc",
        f"-I{services}",
        f"--python_out={services}",
        f"--grpc_python_out={services}",
        str(services / "splitfed.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on splitfed.proto")
    grpc_module = services / "splitfed_pb2_grpc.py"  # protoc writes an absolute import; make it relative
    grpc_module.write_text(
        grpc_module.read_text().replace("import splitfed_pb2 as", "from . import splitfed_pb2 as")
    )


class BuildPyWithProto(build_py):
    def run(self) -> None:
        generate_grpc()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProto})
