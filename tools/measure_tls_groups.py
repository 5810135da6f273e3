"""Measure what a gRPC mutual-TLS handshake negotiates (docs/security.md, "Post-quantum key exchange").

    python tools/measure_tls_groups.py [--json]

Starts a gRPC server with an X.509 SVID (a throwaway CA made like ``meshctl secrets init``'s), connects a
gRPC client with its own SVID through a recording TCP relay on 127.0.0.1, and reads the handshake off the
wire: the groups the ClientHello offers, the key shares it sends (and their sizes), the group the ServerHello
picks and the TLS version. The server's own view (``ssl_negotiated_key_exchange_group`` of the call's auth
context, what keyvault and governance audit per call) is printed beside it. A client built on Python's
``ssl`` (OpenSSL here) makes a second handshake, showing what a classical-only peer gets.
"""
from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import ssl
import struct
import sys
import tempfile
import threading

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "libs"))

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402

from x0tta6bl4.keyvault.svid import SvidIssuer, spiffe_id  # noqa: E402
from x0tta6bl4.rpc.svid import SvidSource, aio_channel, obtain_local  # noqa: E402
from x0tta6bl4.runtime.secrets import make_ca  # noqa: E402

TD = "x0tta6bl4.mesh"
GROUPS = {0x0100: "ffdhe2048", 0x0101: "ffdhe3072", 0x0102: "ffdhe4096", 0x0103: "ffdhe6144", 0x0104: "ffdhe8192",
          0x11EC: "X25519MLKEM768", 0x11EB: "SecP256r1MLKEM768", 0x11ED: "SecP384r1MLKEM1024",
          0x6399: "X25519Kyber768Draft00", 0x001D: "x25519", 0x001E: "x448", 0x0017: "secp256r1",
          0x0018: "secp384r1", 0x0019: "secp521r1"}


def _group(code: int) -> str:
    return GROUPS.get(code, f"0x{code:04x}")


def parse_hello(buf: bytes) -> dict:
    """The key-exchange facts of a ClientHello or ServerHello (the first TLS record of each direction)."""
    if len(buf) < 9 or buf[0] != 22:
        return {"error": "not a TLS handshake record"}
    hs = buf[5:5 + struct.unpack(">H", buf[3:5])[0]]
    kind, p = hs[0], 4 + 2 + 32
    p += 1 + hs[p]                                        # session id
    if kind == 1:
        p += 2 + struct.unpack(">H", hs[p:p + 2])[0]      # cipher suites
        p += 1 + hs[p]                                    # compression methods
    else:
        p += 3                                            # cipher suite, compression
    end = p + 2 + struct.unpack(">H", hs[p:p + 2])[0]
    p += 2
    out: dict = {"message": "ClientHello" if kind == 1 else "ServerHello"}
    while p < end:
        ext, n = struct.unpack(">HH", hs[p:p + 4])
        data, p = hs[p + 4:p + 4 + n], p + 4 + n
        if ext == 10 and kind == 1:                       # supported_groups
            out["offered_groups"] = [_group(struct.unpack(">H", data[i:i + 2])[0]) for i in range(2, len(data), 2)]
        elif ext == 51 and kind == 1:                     # key_share (client)
            shares, q = [], 2
            while q < len(data):
                g, ln = struct.unpack(">HH", data[q:q + 4])
                shares.append({"group": _group(g), "bytes": ln})
                q += 4 + ln
            out["key_shares"] = shares
        elif ext == 51:                                   # key_share (server): the chosen group
            g, ln = struct.unpack(">HH", data[:4])
            out["selected_group"], out["server_share_bytes"] = _group(g), ln
        elif ext == 43 and kind == 2:
            out["tls_version"] = {0x0304: "TLSv1.3", 0x0303: "TLSv1.2"}.get(struct.unpack(">H", data[:2])[0], "?")
    return out


def relay(target: tuple[str, int], seen: dict) -> int:
    """A loopback TCP relay that records the first TLS record in each direction; returns its port."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)

    def pump(a: socket.socket, b: socket.socket, tag: str) -> None:
        buf, first = b"", True
        try:
            while data := a.recv(65536):
                if first:
                    buf += data
                    if len(buf) >= 5 and len(buf) >= 5 + struct.unpack(">H", buf[3:5])[0]:
                        seen.setdefault(tag, parse_hello(buf))
                        first = False
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:          # the other side closed first: the relay's work is done
            pass

    def accept() -> None:
        while True:
            c, _ = lsock.accept()
            s = socket.create_connection(target)
            threading.Thread(target=pump, args=(c, s, "client"), daemon=True).start()
            threading.Thread(target=pump, args=(s, c, "server"), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    return lsock.getsockname()[1]


async def measure() -> dict:
    ca_key, ca = make_ca(TD)
    issuer = SvidIssuer(ca_key, ca, TD)
    server_svid = SvidSource(lambda: asyncio.to_thread(obtain_local, issuer, spiffe_id(TD, "service", "keyvault")))
    await server_svid.start()
    client = obtain_local(issuer, spiffe_id(TD, "operator", "measure"))
    groups: list[str] = []

    class Record(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            handler = await continuation(details)
            inner = handler.unary_unary

            async def call(request, context):
                groups.extend(v.decode() for v in context.auth_context().get("ssl_negotiated_key_exchange_group", []))
                return await inner(request, context)
            return grpc.unary_unary_rpc_method_handler(call, handler.request_deserializer, handler.response_serializer)
    server = grpc.aio.server(interceptors=[Record()])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", server_svid.server_credentials())
    await server.start()
    grpc_seen: dict = {}
    try:
        via = relay(("127.0.0.1", port), grpc_seen)
        async with aio_channel(f"127.0.0.1:{via}", client, "keyvault", TD) as ch:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        ossl_seen: dict = {}
        via2 = relay(("127.0.0.1", port), ossl_seen)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=client.bundle.decode())
        with tempfile.TemporaryDirectory() as d:
            k, c = pathlib.Path(d, "k.pem"), pathlib.Path(d, "c.pem")
            k.write_bytes(client.key)
            c.write_bytes(client.certificate)
            ctx.load_cert_chain(c, k)
        ctx.set_alpn_protocols(["h2"])

        def handshake() -> None:
            with socket.create_connection(("127.0.0.1", via2), timeout=10) as raw, ctx.wrap_socket(raw):
                pass
        await asyncio.to_thread(handshake)
    finally:
        await server.stop(0)
        await server_svid.stop()
    return {"grpc": {"version": grpc.__version__, "client_hello": grpc_seen.get("client"),
                     "server_hello": grpc_seen.get("server"), "server_auth_context_group": groups},
            "python_ssl": {"library": ssl.OPENSSL_VERSION, "client_hello": ossl_seen.get("client"),
                           "server_hello": ossl_seen.get("server")}}


def main() -> int:
    out = asyncio.run(measure())
    if "--json" in sys.argv:
        print(json.dumps(out, indent=1))
        return 0
    g = out["grpc"]
    print(f"grpcio {g['version']} client -> grpcio server (mutual TLS, X.509 SVIDs):")
    print(f"  offered groups   {', '.join(g['client_hello']['offered_groups'])}")
    print("  key shares       " + ", ".join(f"{s['group']} ({s['bytes']} B)" for s in g["client_hello"]["key_shares"]))
    sh = g["server_hello"]
    print(f"  selected         {sh['selected_group']} ({sh['server_share_bytes']} B), {sh['tls_version']}")
    print(f"  server sees      {', '.join(g['server_auth_context_group'])}")
    p = out["python_ssl"]
    print(f"{p['library']} client (Python ssl) -> grpcio server:")
    print(f"  offered groups   {', '.join(p['client_hello']['offered_groups'])}")
    print(f"  selected         {p['server_hello']['selected_group']}, {p['server_hello']['tls_version']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
