"""One fuzz target under atheris (coverage-guided libFuzzer), or under plain random mutation
when atheris is not installed.

    python tests/fuzzing/run.py TARGET CORPUS_DIR [libFuzzer flags: -max_total_time=N …]

Only hsmkm's own errors may come out of a target; any other exception is a crash: atheris
writes the input to the artifact prefix and exits non-zero.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    import atheris
except ImportError:  # pragma: no cover - the fallback
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["hsmkm", "asn1crypto", "targets"]):
        import targets
        from hsmkm import errors
else:
    import targets
    from hsmkm import errors


def _write_seeds(name: str, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in targets.seeds(name):
        (corpus / ("seed-" + hashlib.sha1(seed).hexdigest()[:16])).write_bytes(seed)


def _flag(args: list[str], name: str, default: str) -> str:
    for a in args:
        if a.startswith(f"-{name}="):
            return a.split("=", 1)[1]
    return default


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and buf:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 3 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 64)]
        elif op == 4 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _random_campaign(name: str, corpus: Path, args: list[str]) -> int:
    fn = targets.TARGETS[name]
    pool = [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()] or [b""]
    rng = random.Random(int(_flag(args, "seed", "0")) or None)
    deadline = time.monotonic() + float(_flag(args, "max_total_time", "60"))
    prefix = _flag(args, "artifact_prefix", "./")
    runs = 0
    while time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(pool))
        runs += 1
        try:
            fn(data)
        except errors.HsmkmError:
            pass
        except Exception:
            path = Path(prefix + "crash-" + hashlib.sha1(data).hexdigest())
            path.write_bytes(data)
            traceback.print_exc()
            print(f"==crash== input written to {path}", file=sys.stderr)
            print(f"Done {runs} runs", file=sys.stderr)
            return 1
    print(f"Done {runs} runs in {float(_flag(args, 'max_total_time', '60')):.0f} second(s)", file=sys.stderr)
    return 0


def main() -> int:
    warnings.simplefilter("ignore")  # cryptography's deprecation notes on odd certificates
    name, corpus = sys.argv[1], Path(sys.argv[2])
    flags = sys.argv[3:]
    _write_seeds(name, corpus)
    fn = targets.TARGETS[name]
    if atheris is None:
        print("atheris not installed: random mutation, not coverage-guided", file=sys.stderr)
        return _random_campaign(name, corpus, flags)

    def one_input(data: bytes) -> None:
        with contextlib.suppress(errors.HsmkmError):
            fn(data)

    atheris.Setup([sys.argv[0], *flags, str(corpus)], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
