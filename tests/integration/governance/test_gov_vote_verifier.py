"""The governance service's vote verifier: verdicts computed in worker threads are only ever reused
for exactly the same (key, payload, signature) bytes, and a miss verifies for real."""
import asyncio

from services.governance.verify import VoteVerifier
from x0tta6bl4.pqc import MLDSA65PrivateKey


def test_prechecked_verdicts_answer_only_for_the_same_bytes():
    sk = MLDSA65PrivateKey.generate()
    other = MLDSA65PrivateKey.generate()
    pk = sk.public_key().public_bytes()
    payload, sig = b"vote payload", sk.sign(b"vote payload")
    v = VoteVerifier(threads=2)
    try:
        async def run():
            await v.precheck(pk, payload, sig)
            await v.precheck(pk, b"other payload", sig)                      # bad: wrong payload
            await v.precheck(other.public_key().public_bytes(), payload, sig)  # bad: wrong key
        asyncio.run(run())
        assert v.prechecked == 3
        assert v.verify(pk, payload, sig) is True
        assert v.verify(pk, b"other payload", sig) is False
        assert v.verify(other.public_key().public_bytes(), payload, sig) is False
        assert v.memo_hits == 3
        # a verdict is consumed once; the next identical check verifies again (and still agrees)
        assert v.verify(pk, payload, sig) is True and v.memo_hits == 3
        # never pre-checked: verified inline; tampered signature and garbage key are plain False
        assert v.verify(pk, payload, sig[:-1] + bytes([sig[-1] ^ 1])) is False
        assert v.verify(b"\x00" * 10, payload, sig) is False
        assert v.verify(b"", payload, sig) is False
    finally:
        v.close()


def test_memo_is_bounded():
    sk = MLDSA65PrivateKey.generate()
    pk = sk.public_key().public_bytes()
    v = VoteVerifier(threads=1, memo_size=8)
    try:
        async def run():
            for i in range(20):
                m = f"m{i}".encode()
                await v.precheck(pk, m, sk.sign(m))
        asyncio.run(run())
        assert len(v._memo) == 8
    finally:
        v.close()
