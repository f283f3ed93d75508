#!/usr/bin/env python3
"""OpenFHE's CKKS bootstrapping, measured for a side-by-side comparison with blindfold's.

Uses OpenFHE's Python API (the `openfhe` package on PyPI, a wrapper of the C++ library; the
calls are those of openfhe-python's examples/pke/simple-ckks-bootstrapping.py:
CCParamsCKKSRNS, GenCryptoContext, CryptoContext.EvalBootstrapSetup, EvalBootstrapKeyGen and
EvalBootstrap). Run it through scripts/openfhe-bootstrap.sh, which installs that package
into a virtual environment first.

The scheme: CKKS with a uniform ternary secret, FLEXIBLEAUTO rescaling, hybrid key switching,
a CoeffsToSlots/SlotsToCoeffs level budget of [3, 3] and full packing (N/2 real slots). The
multiplicative depth is the levels wanted after bootstrapping (--levels-left) plus OpenFHE's
own bootstrapping depth (CryptoContext.GetBootstrapDepth). The input ciphertext is encrypted
at the last level (no levels left), as in OpenFHE's examples, and holds N/2 values drawn
uniformly from [-1, 1].

What it measures:
  keygen_s        wall time of EvalBootstrapSetup + KeyGen + EvalMultKeyGen +
                  EvalBootstrapKeyGen (seconds)
  bootstrap_s     wall time of one EvalBootstrap, median of --runs runs (all runs are listed)
  bootstrap_cpu_s CPU time of the process (all threads) during one EvalBootstrap, median
  precision bits  -log2 |decrypted - input| per slot: the worst slot (over all runs) and the
                  mean over the slots (averaged over the runs); EvalBootstrap is randomized,
                  so the runs differ by a few tenths of a bit
  levels_left     levels left on the bootstrapped ciphertext: depth - GetLevel() -
                  (GetNoiseScaleDeg() - 1), as OpenFHE's examples count them
  key_bytes       bytes of the relinearization key and of every automorphism (rotation and
                  conjugation) key, as OpenFHE's binary serialization writes them
                  (SerializeEvalMultKey + SerializeEvalAutomorphismKey for the secret key's
                  tag). The bytes go through a named pipe in a temporary directory and are
                  counted, so tens of GB of keys need no disk space.
  peak_rss_bytes  peak resident memory of this process (getrusage ru_maxrss)
  log_qp          log2 of Q*P: Q exactly, from the context's element parameters; the Python
                  API does not expose P (hybrid key switching's special primes), so log2 P is
                  read from a twin context with the same modulus chain and digit count at
                  ring dimension 32 (OpenFHE chooses P from the sizes of Q's primes and the
                  digit count, not from N)

At 128-bit security OpenFHE checks log2(QP) against the HE standard for N. With the default
parameters its default digit count (3) gives too large a P for N = 2^16; unless
--num-large-digits is given, the script then takes the smallest digit count that passes the
check (smallest keys among those allowed), and says so.

Usage: scripts/openfhe-bootstrap.sh [options]   (see --help). A quick insecure test:
  scripts/openfhe-bootstrap.sh --insecure --log-n 12 --runs 2 --json /tmp/openfhe-12.json
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_LOG_N = 16
MAX_LOG_N = 17
MIN_LOG_N = 5
MAX_MOD_BITS = 60  # OpenFHE's 64-bit native integers take moduli of at most 60 bits

# Counts the bytes that arrive through a named pipe: run in a child process, so that the
# serializing C++ code (which holds Python's GIL) never waits for this process to read.
_COUNTER = """
import sys
n = 0
with open(sys.argv[1], 'rb', buffering=0) as f:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        n += len(b)
print(n)
"""


def _int_in(lo, hi, what):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, not {text!r}")
        if v < lo or (hi is not None and v > hi):
            span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{what} must be in {span}, not {v}")
        return v
    return parse


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="openfhe-bootstrap",
        description="Measure OpenFHE's CKKS bootstrapping (EvalBootstrap): key generation time, "
        "bootstrap wall and CPU time, precision, levels left, key bytes, peak memory.",
        epilog="Defaults: N = 2^16 at HEStd_128_classic, 8 levels left, 53-bit scaling primes, "
        "60-bit first prime, level budget [3, 3], N/2 slots, 3 runs. At N = 2^16 the keys alone "
        "take about 20 GB (10 key-switching digits, 0.34 GB a key): mind the machine's memory, "
        "and try --insecure --log-n 12 first.",
    )
    ap.add_argument("--log-n", type=_int_in(MIN_LOG_N, MAX_LOG_N, "--log-n"), default=None,
                    metavar="K", help=f"ring dimension N = 2^K (default {DEFAULT_LOG_N}); "
                    "below 16 needs --insecure unless the modulus is small")
    ap.add_argument("--insecure", action="store_true",
                    help="security level HEStd_NotSet instead of HEStd_128_classic, so that "
                    "small rings (--log-n) can be tried quickly; NOT secure")
    ap.add_argument("--levels-left", type=_int_in(1, 60, "--levels-left"), default=8, metavar="L",
                    help="levels available after bootstrapping (OpenFHE's "
                    "levelsAvailableAfterBootstrap; default 8)")
    ap.add_argument("--scale-bits", type=_int_in(20, MAX_MOD_BITS, "--scale-bits"), default=53,
                    metavar="B", help="bits of the scaling primes (SetScalingModSize; default 53)")
    ap.add_argument("--first-mod-bits", type=_int_in(21, MAX_MOD_BITS, "--first-mod-bits"),
                    default=60, metavar="B",
                    help="bits of the first prime q0 (SetFirstModSize; default 60; must be "
                    "larger than --scale-bits)")
    ap.add_argument("--level-budget", type=_int_in(1, 10, "each level budget"), nargs=2,
                    default=[3, 3], metavar=("CTS", "STC"),
                    help="levels spent on CoeffsToSlots and on SlotsToCoeffs (default 3 3)")
    ap.add_argument("--num-large-digits", type=_int_in(1, 64, "--num-large-digits"), default=None,
                    metavar="D", help="digits of hybrid key switching (SetNumLargeDigits). "
                    "Default: OpenFHE's own choice, or, when the 128-bit check rejects that at "
                    "this N, the smallest that passes")
    ap.add_argument("--threads", type=_int_in(1, 1024, "--threads"), default=None, metavar="T",
                    help="OpenMP threads (sets OMP_NUM_THREADS before OpenFHE is loaded; "
                    "default: OMP_NUM_THREADS if set, else OpenMP's default, one per core)")
    ap.add_argument("--runs", type=_int_in(1, 1000, "--runs"), default=3, metavar="R",
                    help="bootstraps to time (default 3); the median is reported")
    ap.add_argument("--seed", type=_int_in(0, None, "--seed"), default=1,
                    help="seed of the random input values (default 1)")
    ap.add_argument("--no-key-bytes", action="store_true",
                    help="skip serializing the keys (key_bytes is then null)")
    ap.add_argument("--json", metavar="PATH", default=None,
                    help="also write the results as one JSON object to PATH")
    args = ap.parse_args(argv)
    if args.first_mod_bits <= args.scale_bits:
        ap.error(f"--first-mod-bits ({args.first_mod_bits}) must be larger than --scale-bits "
                 f"({args.scale_bits}), as OpenFHE requires")
    if args.log_n is None:
        args.log_n = DEFAULT_LOG_N
    if args.json is not None:
        parent = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(parent):
            ap.error(f"--json {args.json}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK) or (os.path.exists(args.json) and not os.access(args.json, os.W_OK)):
            ap.error(f"--json {args.json}: not writable")
        if os.path.isdir(args.json):
            ap.error(f"--json {args.json}: is a directory")
    return args


def fail(msg):
    print(f"openfhe-bootstrap: error: {msg}", file=sys.stderr)
    sys.exit(1)


def openfhe_message(e):
    """OpenFHE's exception text without its build path prefix ('/root/.../x.cpp:l.152:F(): ')."""
    text = str(e).strip()
    marker = "(): "
    i = text.find(marker)
    text = text[i + len(marker):] if i >= 0 and text.startswith("/") else text
    return text.rstrip(".")


def omp_threads(openfhe_module):
    """Threads OpenMP will use, asked from the libgomp that the openfhe package loaded."""
    try:
        import ctypes
        lib = os.path.join(os.path.dirname(openfhe_module.__file__), "lib", "libgomp.so")
        return int(ctypes.CDLL(lib).omp_get_max_threads())
    except Exception:
        env = os.environ.get("OMP_NUM_THREADS", "")
        return int(env) if env.isdigit() else os.cpu_count()


def make_params(o, args, depth, log_n, dnum, secure):
    p = o.CCParamsCKKSRNS()
    p.SetSecretKeyDist(o.SecretKeyDist.UNIFORM_TERNARY)
    p.SetSecurityLevel(o.SecurityLevel.HEStd_128_classic if secure else o.SecurityLevel.HEStd_NotSet)
    p.SetRingDim(1 << log_n)
    p.SetScalingTechnique(o.ScalingTechnique.FLEXIBLEAUTO)
    p.SetScalingModSize(args.scale_bits)
    p.SetFirstModSize(args.first_mod_bits)
    p.SetMultiplicativeDepth(depth)
    p.SetBatchSize(1 << (log_n - 1))
    if dnum:
        p.SetNumLargeDigits(dnum)
    return p


def find_key(obj, key):
    """First value stored under `key` anywhere in a parsed JSON document."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            if key in x and not isinstance(x[key], (dict, list)):
                return x[key]
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return None


def make_context(o, args, depth, secure):
    """The crypto context, and the digit count chosen (None: OpenFHE's own) with a note."""
    if args.num_large_digits is not None:
        return o.GenCryptoContext(make_params(o, args, depth, args.log_n, args.num_large_digits, secure)), None
    try:
        return o.GenCryptoContext(make_params(o, args, depth, args.log_n, 0, secure)), None
    except RuntimeError as e:
        if not secure or "HE standards" not in str(e):
            raise
        first = e
    towers = depth + 1
    for dnum in range(1, towers + 1):
        try:
            cc = o.GenCryptoContext(make_params(o, args, depth, args.log_n, dnum, secure))
        except RuntimeError:
            continue
        note = (f"OpenFHE's default digit count is rejected by the 128-bit check at N = 2^{args.log_n} "
                f"({openfhe_message(first)}); took the smallest that passes: "
                f"--num-large-digits {dnum}")
        return cc, note
    raise first


def log2_p(o, args, depth, dnum):
    """log2 P and the number of special primes, from a ring-dimension-32 twin context."""
    cc = o.GenCryptoContext(make_params(o, args, depth, 5, dnum, False))
    for feature in (o.PKESchemeFeature.PKE, o.PKESchemeFeature.KEYSWITCH, o.PKESchemeFeature.LEVELEDSHE):
        cc.Enable(feature)
    q = cc.GetElementParams().GetModulus()
    kp = cc.KeyGen()
    cc.EvalMultKeyGen(kp.secretKey)
    key = cc.GetEvalMultKeyVector(kp.secretKey.GetKeyTag())[0]
    doc = json.loads(o.Serialize(key, o.JSON))
    o.ClearEvalMultKeys()
    moduli = set()
    stack = [doc]
    while stack:  # every DCRT tower's parameters carry their modulus as {"cm": {"v": q_i}}
        x = stack.pop()
        if isinstance(x, dict):
            cm = x.get("cm")
            if isinstance(cm, dict) and isinstance(cm.get("v"), int):
                moduli.add(cm["v"])
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    special = [m for m in moduli if q % m != 0]
    return sum(math.log2(m) for m in special), len(special)


def serialized_bytes(write, workdir, name):
    """Bytes that write(path) puts into path, counted through a named pipe (no disk used)."""
    path = os.path.join(workdir, name)
    if not hasattr(os, "mkfifo"):
        ok = write(path)
        size = os.path.getsize(path) if ok and os.path.exists(path) else None
        if os.path.exists(path):
            os.remove(path)
        return size
    os.mkfifo(path)
    reader = subprocess.Popen([sys.executable, "-c", _COUNTER, path], stdout=subprocess.PIPE, text=True)
    try:
        ok = write(path)
    finally:
        # If the writer never opened the pipe, the reader still waits in open(): give it an EOF.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
        out, _ = reader.communicate()
        os.remove(path)
    if not ok or reader.returncode != 0:
        return None
    return int(out.strip())


def warn_memory(per_key):
    """Says on stderr when the keys alone may not fit into the memory available now."""
    # Bootstrapping counted 46 to 60 automorphism keys (plus the relinearization key) at
    # N = 2^12..2^14 with level budget [3, 3]; the count at other N is not known in advance.
    need = 61 * per_key
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return
    if need > 0.8 * avail:
        print(f"warning: one evaluation key takes {per_key / 1e9:.3f} GB here, so the bootstrapping "
              f"keys may need about {need / 1e9:.1f} GB (61 keys, as at N = 2^14) besides the rest; "
              f"{avail / 1e9:.1f} GB of memory is available", file=sys.stderr)


def precision_bits(got, want):
    """(worst, mean) of -log2 |got - want| over the slots (an exact slot counts as 1e-300)."""
    import numpy as np
    err = np.maximum(np.abs(np.asarray(got, dtype=np.float64) - want), 1e-300)
    bits = -np.log2(err)
    return float(bits.min()), float(bits.mean())


def median(xs):
    return float(statistics.median(xs))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before libgomp is loaded

    try:
        import numpy as np
        import openfhe as o
    except ImportError as e:
        fail(f"cannot import OpenFHE's Python package ({e}); run this through "
             "scripts/openfhe-bootstrap.sh, which installs it")
    try:
        from importlib.metadata import version as dist_version
        package_version = dist_version("openfhe")
    except Exception:
        package_version = None

    secure = not args.insecure
    notes = []
    key_dist = o.SecretKeyDist.UNIFORM_TERNARY
    level_budget = list(args.level_budget)
    try:
        boot_depth = o.CryptoContext.GetBootstrapDepth(level_budget, key_dist)
    except RuntimeError as e:
        fail(f"OpenFHE refuses level budget {level_budget}: {openfhe_message(e)}")
    depth = args.levels_left + boot_depth

    try:
        cc, note = make_context(o, args, depth, secure)
    except RuntimeError as e:
        hint = ""
        if secure and "HE standards" in str(e):
            tried = "" if args.num_large_digits is not None else ", nor with any --num-large-digits"
            hint = (f"{tried}; at N = 2^{args.log_n} try fewer --levels-left, a smaller "
                    "--scale-bits, or --insecure for a quick test")
        fail(f"OpenFHE refuses the parameters (N = 2^{args.log_n}, depth {depth} = "
             f"{args.levels_left} levels left + {boot_depth} for bootstrapping, "
             f"{args.scale_bits}-bit scaling primes): {openfhe_message(e)}{hint}")
    if note:
        notes.append(note)
        print(f"note: {note}", file=sys.stderr)
    for feature in (o.PKESchemeFeature.PKE, o.PKESchemeFeature.KEYSWITCH, o.PKESchemeFeature.LEVELEDSHE,
                    o.PKESchemeFeature.ADVANCEDSHE, o.PKESchemeFeature.FHE):
        cc.Enable(feature)

    ring_dim = cc.GetRingDimension()
    slots = ring_dim // 2
    cc_json = json.loads(o.Serialize(cc, o.JSON))
    dnum = find_key(cc_json, "dnum")
    log_q = math.log2(cc.GetElementParams().GetModulus())
    try:
        log_p, special_primes = log2_p(o, args, depth, dnum)
        log_qp = log_q + log_p
    except Exception as e:  # only the report of log2 P depends on this
        log_p = special_primes = log_qp = None
        notes.append(f"log2 P unknown: the twin context failed ({openfhe_message(e)})")
    threads = omp_threads(o)
    if special_primes is not None:
        # A hybrid key-switching key is 2 x dnum polynomials over Q*P: 8 bytes a coefficient.
        per_key = 2 * dnum * (depth + 1 + special_primes) * ring_dim * 8
        warn_memory(per_key)

    print(f"OpenFHE {o.__version__}: CKKS bootstrapping at N = 2^{args.log_n}, {slots} slots, "
          f"depth {depth}, {threads} thread(s){'' if secure else ', INSECURE (HEStd_NotSet)'}",
          file=sys.stderr)

    # Key generation: bootstrapping precomputation, secret/public key, relinearization key,
    # rotation and conjugation keys.
    try:
        t0 = time.perf_counter()
        cc.EvalBootstrapSetup(level_budget, [0, 0], slots)
        keys = cc.KeyGen()
        cc.EvalMultKeyGen(keys.secretKey)
        cc.EvalBootstrapKeyGen(keys.secretKey, slots)
        keygen_s = time.perf_counter() - t0
    except RuntimeError as e:
        fail(f"OpenFHE failed in key generation: {openfhe_message(e)}")
    tag = keys.secretKey.GetKeyTag()
    automorphism_keys = len(cc.GetExistingEvalAutomorphismKeyIndices(tag))
    print(f"key generation: {keygen_s:.3f} s ({automorphism_keys} automorphism keys)", file=sys.stderr)

    rng = np.random.default_rng(args.seed)
    x = rng.uniform(-1.0, 1.0, slots)
    ptxt = cc.MakeCKKSPackedPlaintext(x, 1, depth - 1, None, slots)  # at the last level
    ctxt = cc.Encrypt(keys.publicKey, ptxt)

    wall, cpu, worst, means, left = [], [], [], [], []
    for run in range(args.runs):
        try:
            c0 = time.process_time()
            t0 = time.perf_counter()
            out = cc.EvalBootstrap(ctxt)
            t1 = time.perf_counter()
            c1 = time.process_time()
        except RuntimeError as e:
            fail(f"OpenFHE failed in EvalBootstrap: {openfhe_message(e)}")
        wall.append(t1 - t0)
        cpu.append(c1 - c0)
        left.append(depth - out.GetLevel() - (out.GetNoiseScaleDeg() - 1))
        dec = cc.Decrypt(keys.secretKey, out)
        dec.SetLength(slots)
        w, m = precision_bits(dec.GetRealPackedValue(), x)
        worst.append(w)
        means.append(m)
        print(f"run {run + 1}/{args.runs}: {wall[-1]:.3f} s wall, {cpu[-1]:.3f} s CPU, "
              f"precision {w:.2f} bits worst / {m:.2f} mean", file=sys.stderr)
        del out, dec
    if len(set(left)) != 1:
        notes.append(f"levels left differ between runs: {left}")

    key_bytes = key_bytes_mult = key_bytes_auto = None
    if args.no_key_bytes:
        notes.append("key bytes not measured (--no-key-bytes)")
    else:
        with tempfile.TemporaryDirectory(prefix="openfhe-keys-") as workdir:
            key_bytes_mult = serialized_bytes(
                lambda p: cc.SerializeEvalMultKey(p, o.BINARY, tag), workdir, "mult.bin")
            key_bytes_auto = serialized_bytes(
                lambda p: cc.SerializeEvalAutomorphismKey(p, o.BINARY, tag), workdir, "automorphism.bin")
        if key_bytes_mult is None or key_bytes_auto is None:
            notes.append("key bytes unknown: OpenFHE's key serialization failed")
        else:
            key_bytes = key_bytes_mult + key_bytes_auto

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_rss_bytes = peak_rss if sys.platform == "darwin" else peak_rss * 1024

    result = {
        "tool": "openfhe",
        "version": o.__version__,
        "package_version": package_version,
        "security": "HEStd_128_classic" if secure else "HEStd_NotSet",
        "log_n": ring_dim.bit_length() - 1,
        "ring_dim": ring_dim,
        "slots": slots,
        "levels_left": left[0],
        "levels_left_requested": args.levels_left,
        "depth": depth,
        "bootstrap_depth": boot_depth,
        "scale_bits": args.scale_bits,
        "first_mod_bits": args.first_mod_bits,
        "level_budget": level_budget,
        "num_large_digits": dnum,
        "special_primes": special_primes,
        "log_q": round(log_q, 3),
        "log_p": None if log_p is None else round(log_p, 3),
        "log_qp": None if log_qp is None else round(log_qp, 3),
        "threads": threads,
        "runs": args.runs,
        "seed": args.seed,
        "keygen_s": round(keygen_s, 4),
        "bootstrap_s": round(median(wall), 4),
        "bootstrap_runs_s": [round(t, 4) for t in wall],
        "bootstrap_cpu_s": round(median(cpu), 4),
        "bootstrap_cpu_runs_s": [round(t, 4) for t in cpu],
        "precision_bits_worst": round(min(worst), 3),
        "precision_bits_mean": round(sum(means) / len(means), 3),
        "key_bytes": key_bytes,
        "key_bytes_mult": key_bytes_mult,
        "key_bytes_automorphism": key_bytes_auto,
        "automorphism_keys": automorphism_keys,
        "peak_rss_bytes": peak_rss_bytes,
        "notes": notes,
    }
    print_table(result)
    if args.json is not None:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        os.replace(tmp, args.json)
    return 0


def print_table(r):
    def gb(n):
        return "n/a" if n is None else f"{n / 1e9:.3f} GB ({n} bytes)"

    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    rows = [
        ("tool", f"OpenFHE {r['version']} (package {r['package_version']})"),
        ("security", r["security"] + ("" if r["security"] != "HEStd_NotSet" else "  (INSECURE: test only)")),
        ("ring dimension N", f"{r['ring_dim']} (2^{r['log_n']}), {r['slots']} slots"),
        ("log2 QP", f"{num(r['log_qp'], '.1f')} (Q {r['log_q']:.1f} + P {num(r['log_p'], '.1f')}, "
                    f"{r['special_primes']} special primes, {r['num_large_digits']} digits)"),
        ("depth", f"{r['depth']} = {r['levels_left_requested']} after bootstrapping + "
                  f"{r['bootstrap_depth']} for it; level budget {r['level_budget']}"),
        ("scaling / first prime", f"{r['scale_bits']} / {r['first_mod_bits']} bits"),
        ("threads", str(r["threads"])),
        ("key generation", f"{r['keygen_s']:.3f} s"),
        ("bootstrap (median)", f"{r['bootstrap_s']:.3f} s wall, {r['bootstrap_cpu_s']:.3f} s CPU"),
        ("bootstrap runs", ", ".join(f"{t:.3f}" for t in r["bootstrap_runs_s"]) + " s"),
        ("precision", f"{r['precision_bits_worst']:.2f} bits worst slot, {r['precision_bits_mean']:.2f} mean"),
        ("levels left", str(r["levels_left"])),
        ("key bytes", gb(r["key_bytes"]) + (f", {r['automorphism_keys']} automorphism keys + relinearization key"
                                            if r["key_bytes"] is not None else "")),
        ("peak memory (RSS)", gb(r["peak_rss_bytes"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for n in r["notes"]:
        print(f"note: {n}")


if __name__ == "__main__":
    sys.exit(main())
