"""Run a server that must stay on 127.0.0.1 and expose one of its ports: ``python forward.py --listen
0.0.0.0:PORT --to 127.0.0.1:PORT -- COMMAND...`` starts COMMAND as a child and copies TCP connections from the
listening address to the target byte for byte (request signatures that cover the Host header stay valid).

The exposed stack uses it for SeaweedFS: ``weed`` binds every listener to one address, and its S3 gateway's
gRPC port takes new identities without checking anything, so only the S3 HTTP port may face the network.
Stdlib only and run by path, so it needs nothing installed. Exits with the child's code when the child
exits; SIGTERM/SIGINT stop the child and then this process.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

CHUNK = 1 << 16


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side (HTTP clients may still be reading)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def _serve_one(target: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        for w in (up_writer, writer):
            w.close()


async def run(listen: tuple[str, int], target: tuple[str, int], command: list[str]) -> int:
    """Start ``command``, forward ``listen`` -> ``target`` while it runs; returns its exit code."""
    server = await asyncio.start_server(lambda r, w: _serve_one(target, r, w), *listen, reuse_address=True)
    child = await asyncio.create_subprocess_exec(*command)  # after the bind: a taken port leaves no orphan
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, child.send_signal, sig)
    code = await child.wait()
    server.close()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT to accept connections on")
    parser.add_argument("--to", type=_address, required=True, help="HOST:PORT of the child's own listener")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the server command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the server command after --")
    return asyncio.run(run(args.listen, args.to, command))


if __name__ == "__main__":
    sys.exit(main())
