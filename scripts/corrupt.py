#!/usr/bin/env python3
"""Corrupted inputs against blindfold's file-based client/server split.

Makes one valid set of files (model, secret key, evaluation keys, plan, key id, request,
response), then feeds the command that reads each file many corrupted variants of it:
truncations, bit flips, swapped regions, oversized counts (0xff runs and huge varints),
foreign headers (the header of another kind of object), trailing bytes, empty files, a
1 GiB sparse file, and for the JSON parts (plan.json, the model's architecture) numbers
replaced by huge ones. Every run must end in a refusal that names the file (exit status 1)
or, for a harmless change, in success; a panic (status 101), an abort or another signal, a
time-out, or a peak memory above the bound is a failure.

    scripts/corrupt.py [--variants N] [--seed S] [--json REPORT] [--work DIR] [--keep]

Prints one line per file and a summary; exits 1 if any run failed. Peak memory is each
process's maximum resident set size (wait4). The bound is twice the largest peak of the
valid runs plus 64 MB (the valid files of the plan, decoded once, and the evaluation's
working set).
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 120


def run(binary, args, timeout=TIMEOUT_S):
    """Runs the binary; returns (status, stderr, peak RSS in bytes, seconds).

    status is the exit code, or -signal for a process killed by a signal, or None on time-out.
    """
    t0 = time.time()
    p = subprocess.Popen([binary] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = t0 + timeout
    stderr = b""
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline:
            p.kill()
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = 0
            stderr = p.stderr.read()
            return None, stderr.decode(errors="replace"), usage.ru_maxrss * 1024, time.time() - t0
        time.sleep(0.02)
    stderr = p.stderr.read()
    p.returncode = 0  # reaped by wait4
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, stderr.decode(errors="replace"), usage.ru_maxrss * 1024, time.time() - t0


def ok(binary, args):
    code, err, rss, _ = run(binary, args, timeout=1800)
    if code != 0:
        sys.exit(f"setup step failed: blindfold {' '.join(args)}\n{err}")
    return rss


# --- mutations -------------------------------------------------------------------------------

def truncate(rng, b, _):
    return b[: rng.randrange(len(b))] if b else b


def flip_bits(rng, b, _):
    b = bytearray(b)
    for _ in range(rng.choice([1, 1, 4, 32])):
        if b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def flip_header(rng, b, _):
    """A bit flip among the first 64 bytes: headers, kinds, lengths and counts."""
    b = bytearray(b)
    if b:
        i = rng.randrange(min(64, len(b)))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def swap(rng, b, _):
    if len(b) < 4:
        return b[::-1]
    n = rng.randrange(1, max(2, len(b) // 8))
    i, j = rng.randrange(len(b) - n), rng.randrange(len(b) - n)
    b = bytearray(b)
    b[i : i + n], b[j : j + n] = b[j : j + n], b[i : i + n]
    return bytes(b)


def ff_run(rng, b, _):
    """0xff over eight bytes: lengths and counts become huge."""
    b = bytearray(b)
    if b:
        i = rng.randrange(min(len(b), 256) if rng.random() < 0.7 else len(b))
        b[i : i + 8] = b"\xff" * len(b[i : i + 8])
    return bytes(b)


def huge_varint(rng, b, _):
    """A varint of 2^35 - 1 inserted where a length or count may be read."""
    i = rng.randrange(min(len(b), 128) + 1)
    return b[:i] + b"\xff\xff\xff\xff\x7f" + b[i:]


def foreign_header(rng, b, others):
    """The first bytes of another file (another object kind, message kind or format)."""
    o = rng.choice(others)
    n = rng.choice([1, 8, 47, 64])
    return o[:n] + b[n:]


def trailing(rng, b, _):
    return b + bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 1000])))


def empty(rng, b, _):
    return b""


def json_numbers(rng, b, _):
    """In JSON text (plan.json, the model's metadata), one number made huge or odd."""
    text = b.decode("latin-1")
    spans = []
    i = 0
    while i < len(text):
        if text[i].isdigit() and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == ".")):
            j = i
            while j < len(text) and (text[j].isdigit() or text[j] in ".eE-"):
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    if not spans:
        return flip_bits(rng, b, None)
    i, j = rng.choice(spans)
    new = rng.choice(["1000000000000", "4611686018427387904", "1152921504606846976", "0",
                      "18446744073709551615", "1e308", "5e-324", "100000", "1000000000"])
    out = text[:i] + new + text[j:]
    if b[:8] != text[:8].encode("latin-1"):
        return out.encode("latin-1")
    # A safetensors file: keep its 8-byte header length consistent with the new JSON.
    n = int.from_bytes(b[:8], "little")
    if j <= 8 + n:
        n += len(new) - (j - i)
        out = n.to_bytes(8, "little").decode("latin-1") + out[8:]
    return out.encode("latin-1")


BINARY_MUTATIONS = [truncate, flip_bits, flip_header, swap, ff_run, huge_varint, foreign_header, trailing, empty]


# --- targets ---------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=int, default=80, help="corrupted variants per file (default 80)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the mutations (default 1)")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--work", help="work directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/blindfold"))
    a = ap.parse_args()

    if a.binary == os.path.join(ROOT, "target/release/blindfold"):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "blindfold-cli"], cwd=ROOT, check=True)
    b = a.binary
    w = a.work or tempfile.mkdtemp(prefix="blindfold-corrupt-")
    os.makedirs(w, exist_ok=True)
    rng = random.Random(a.seed)
    J = lambda *p: os.path.join(w, *p)

    print(f"valid files in {w}", file=sys.stderr)
    valid_rss = []
    ok(b, ["train", "--arch", "tenseal-cnn1", "--epochs", "1", "--limit", "500", "--out", J("m.safetensors")])
    valid_rss.append(ok(b, ["keygen", "--model", J("m.safetensors"), "--out-dir", J("keys")]))
    valid_rss.append(ok(b, ["encrypt", "--keys", J("keys"), "--index", "0", "--out", J("req")]))
    evaluate = lambda model, keys, req: ["evaluate", "--model", model, "--eval-keys", keys, "--input", req,
                                         "--out", J("out")]
    valid_rss.append(ok(b, evaluate(J("m.safetensors"), J("keys", "eval.keys"), J("req"))))
    shutil.copy(J("out"), J("resp"))
    valid_rss.append(ok(b, ["decrypt", "--keys", J("keys"), "--input", J("resp")]))
    bound = 2 * max(valid_rss) + 64 * 2**20

    def keys_with(name, path):
        """A copy of the keys directory with one file replaced."""
        d = J("keys-variant")
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(J("keys"), d)
        shutil.copy(path, os.path.join(d, name))
        return d

    targets = {
        # file: (valid path, how to run the command that reads a variant at path, mutations)
        "model (model holder)": (J("m.safetensors"), lambda p: evaluate(p, J("keys", "eval.keys"), J("req")),
                                 BINARY_MUTATIONS + [json_numbers] * 3),
        "model (client's keygen)": (J("m.safetensors"), lambda p: ["keygen", "--model", p, "--out-dir", J("kg")],
                                    BINARY_MUTATIONS + [json_numbers] * 3),
        "eval.keys": (J("keys", "eval.keys"), lambda p: evaluate(J("m.safetensors"), p, J("req")), BINARY_MUTATIONS),
        "request": (J("req"), lambda p: evaluate(J("m.safetensors"), J("keys", "eval.keys"), p), BINARY_MUTATIONS),
        "response": (J("resp"), lambda p: ["decrypt", "--keys", J("keys"), "--input", p], BINARY_MUTATIONS),
        "secret.key": (J("keys", "secret.key"),
                       lambda p: ["decrypt", "--keys", keys_with("secret.key", p), "--input", J("resp")],
                       BINARY_MUTATIONS),
        "plan.json": (J("keys", "plan.json"),
                      lambda p: ["encrypt", "--keys", keys_with("plan.json", p), "--index", "0", "--out", J("x")],
                      [truncate, flip_bits, swap, trailing, empty] + [json_numbers] * 6),
        "key.id": (J("keys", "key.id"), lambda p: ["decrypt", "--keys", keys_with("key.id", p), "--input", J("resp")],
                   [truncate, flip_bits, swap, trailing, empty, ff_run]),
    }
    originals = {name: open(path, "rb").read() for name, (path, _, _) in targets.items()}
    others = list(originals.values())

    rows, failures, total = [], [], 0
    for name, (path, command, mutations) in targets.items():
        base = os.path.basename(path)
        counts = {"refused, names the file": 0, "refused, vague": 0, "accepted": 0, "failed": 0}
        accepted_by = {}
        peak = 0
        for k in range(a.variants + 1):
            variant = J("variant-" + base)
            if k == a.variants:
                kind = "1 GiB sparse file"
                with open(variant, "wb") as f:
                    f.truncate(1 << 30)
            else:
                m = rng.choice(mutations)
                kind = m.__name__
                with open(variant, "wb") as f:
                    foreign = [o for o in others if o[:64] != originals[name][:64]]
                    f.write(m(rng, originals[name], foreign))
            code, err, rss, secs = run(b, command(variant))
            total += 1
            peak = max(peak, rss)
            problem = None
            if code is None:
                problem = f"time-out after {secs:.0f} s"
            elif code < 0:
                problem = f"killed by signal {-code} ({signal.Signals(-code).name})"
            elif code not in (0, 1):
                problem = f"exit status {code}" + (" (panic)" if "panicked" in err else "")
            elif rss > bound:
                problem = f"peak memory {rss / 2**20:.0f} MB above the bound {bound / 2**20:.0f} MB"
            if problem:
                counts["failed"] += 1
                failures.append({"file": name, "mutation": kind, "problem": problem, "stderr": err[-2000:]})
                keep = J(f"failure-{len(failures)}-{base}")
                shutil.copy(variant, keep) if kind != "1 GiB sparse file" else None
            elif code == 0:
                counts["accepted"] += 1
                accepted_by[kind] = accepted_by.get(kind, 0) + 1
            elif base in err or "keys-variant" in err:
                counts["refused, names the file"] += 1
            else:
                counts["refused, vague"] += 1
                failures.append({"file": name, "mutation": kind, "problem": "refusal does not name the file",
                                 "stderr": err[-2000:]})
        rows.append({"file": name, "variants": a.variants + 1, **counts, "accepted_by": accepted_by,
                     "peak_rss_mb": round(peak / 2**20, 1)})
        print(f"{name:<26} {a.variants + 1:>4} variants: " + ", ".join(f"{v} {k}" for k, v in counts.items())
              + f"; peak RSS {peak / 2**20:.0f} MB"
              + (f" (accepted: {', '.join(f'{v} {k}' for k, v in accepted_by.items())})" if accepted_by else ""),
              flush=True)

    worst = max(r["peak_rss_mb"] for r in rows)
    print(f"\n{total} corrupted inputs: {sum(r['failed'] for r in rows)} failures "
          f"(panics, aborts, signals, time-outs, memory), "
          f"{sum(r['refused, vague'] for r in rows)} refusals not naming the file; "
          f"largest peak RSS {worst:.0f} MB (bound {bound / 2**20:.0f} MB: twice the valid runs' "
          f"{max(valid_rss) / 2**20:.0f} MB plus 64 MB)")
    for f in failures[:20]:
        print(f"FAIL {f['file']} / {f['mutation']}: {f['problem']}\n  {f['stderr'].strip()[-300:]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"seed": a.seed, "total": total, "bound_mb": bound / 2**20,
                       "valid_peak_mb": max(valid_rss) / 2**20, "rows": rows, "failures": failures}, f, indent=2)
    if not a.keep and not a.work:
        shutil.rmtree(w, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
