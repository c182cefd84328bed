"""Scrub benchmark: Sluice's log scrubber vs. ``grep -F`` vs. a ``str.replace`` loop.

A benchmark, not a test: run it by hand, ``.venv/bin/python bench/bench_scrub.py`` (about 40
seconds on an idle 2-core machine). It generates ~100 MB of realistic log text once into a
temporary directory (worker and platform lines, connector JSON messages, HTTP lines, 1% of lines
holding a registered value in one of the forms a log gives it), then for 10, 1,000 and 10,000
registered values measures, in one run:

1. **Sluice**: ``LogScrubber(cursor_values=VALUES, secrets=(), cursor_fields=("updated_at",))``
   over the file, streaming: ``scrub_chunks`` over ``read(1 MiB)`` chunks of the file opened as
   text, every scrubbed chunk written to an output file; and ``scrub_stream`` over the file's
   lines, written the same way (the line API the activity uses). Building the scrubber (every
   spelling of every value, two automata) is timed apart.
2. **grep**: ``LC_ALL=C grep -F -c -f VALUES FILE``, a subprocess whose output is a pipe (GNU
   grep stops at the first match when its output is ``/dev/null``). It only counts matching lines,
   of the values as is: the reference for raw multi-pattern search speed.
3. **str.replace**: what Airbyte's Python CDK does to mask secrets, ``for v in values: line =
   line.replace(v, "****")`` on every line, values as is. At 10 values over the whole file; at
   1,000 and 10,000 values over the first 2 MB only (``--replace-sample-mb``), the rate
   extrapolated to the whole file, because the whole file would take minutes to an hour.

Rates are MB/s of input (10^6 bytes), best of ``--repeat`` runs (the machine is shared; the best
run is the least disturbed one). After the Sluice runs, grep counts the lines of the scrubbed
output that still hold a registered value of at least four characters: it must say 0.

``--growth`` measures how the scrubber scales instead: one log of the largest ``--growth-sizes``
(default 100 and 1000 MB) is generated, the smaller sizes are its first N MB (cut at a line
break), and at 1,000 values each size is scrubbed in a child process of its own (so that its
peak RSS is its own: VmHWM, and the RSS once the scrubber is built), rounds interleaving the
sizes, by ``scrub_chunks`` over 1 MiB reads and by the retention path (the file's lines into
``scrub_chunks``, written through a TextIOWrapper, as ``workers/retained_logs.py`` does). A
third row per size, ``copy``, scrubs nothing: it copies the log to the same output, so that the
file system's cost of writing that much is measured beside the scrubber's, in the same run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from purge.scrub import MIN_FREE_TEXT_LENGTH, LogScrubber  # noqa: E402

MB = 1_000_000
VALUE_COUNTS = (10, 1_000, 10_000)
START = datetime(2026, 11, 29, 6, 0, 0, tzinfo=UTC)
STREAMS = ("users", "purchases", "products", "orders", "invoices")


# --- data --------------------------------------------------------------------------------------


def make_values(rng: random.Random, count: int) -> list[str]:
    """Cursor values as states hold them: timestamps near the log's own, ids, uuids, text."""
    values: list[str] = []
    while len(values) < count:
        kind = len(values) % 5
        if kind in (0, 1):
            moment = START + timedelta(seconds=rng.randrange(-86_400 * 30, 86_400 * 30))
            text = moment.isoformat()
            values.append(text if kind == 0 else text.replace("+00:00", "Z"))
        elif kind == 2:
            values.append(str(rng.randrange(10**6, 10**12)))
        elif kind == 3:
            values.append(str(uuid.UUID(int=rng.getrandbits(128))))
        else:
            name = rng.choice(("o'brien", 'jo "jj" smith', "müller", "dupont", "nguyen"))
            values.append(f"{name}.{rng.randrange(10**5)}@example.com")
    return values


def sensitive_line(rng: random.Random, value: str, stamp: str) -> str:
    """A line holding ``value`` in one of the forms a log gives it."""
    stream = rng.choice(STREAMS)
    form = rng.randrange(7)
    if form == 0:
        blob = {"updated_at": value, "id": rng.randrange(1000)}
        message = f"Setting state of {stream} stream to {blob}"
        return json.dumps({"type": "LOG", "log": {"level": "INFO", "message": message}})
    if form == 1:
        state = {"stream_descriptor": {"name": stream}, "stream_state": {"cursor": value}}
        return json.dumps({"type": "STATE", "state": {"type": "STREAM", "stream": state}})
    if form == 2:
        return (
            f"{stamp} source-faker INFO HTTP Request: GET https://api.example.com/v1/{stream}"
            f'?updated_since={quote(value, safe="")}&per_page=100 "HTTP/1.1 200 OK"'
        )
    if form == 3:
        return f"{stamp} source INFO emitting record updated_at={value} for {stream}"
    if form == 4:
        message = f"Page cursor {json.dumps({'after': value})} for {stream}"
        return json.dumps({"type": "LOG", "log": {"level": "DEBUG", "message": message}})
    if form == 5:
        token = base64.urlsafe_b64encode(json.dumps({"after": value}).encode()).decode()
        return f"{stamp} source INFO next page token {token}"
    return f"{stamp} destination WARN slow batch ending at {value} ({rng.randrange(100)} ms)"


def plain_line(rng: random.Random, moment: datetime) -> str:
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    stream = rng.choice(STREAMS)
    pick = rng.random()
    if pick < 0.3:
        return (
            f"{moment:%Y-%m-%d %H:%M:%S} INFO i.a.w.g.ReplicationWorkerHelper(processMessage):"
            f"{rng.randrange(100, 400)} - Records read: {rng.randrange(10**6)} "
            f"({rng.randrange(1000)} MB)"
        )
    if pick < 0.55:
        message = rng.choice(
            (
                f"Read {rng.randrange(10**4)} records from {stream} stream",
                f"Marking stream {stream} as RUNNING",
                f"Syncing stream: {stream} ",
                f"Finished syncing {stream}",
                f"Backing off _send(...) for {rng.random() * 5:.1f}s",
            )
        )
        return json.dumps({"type": "LOG", "log": {"level": "INFO", "message": message}})
    if pick < 0.7:
        status = {"stream_descriptor": {"name": stream}, "status": "RUNNING"}
        trace = {
            "type": "STREAM_STATUS",
            "emitted_at": moment.timestamp() * 1000,
            "stream_status": status,
        }
        return json.dumps({"type": "TRACE", "trace": trace})
    if pick < 0.85:
        return (
            f"{stamp} source-faker INFO HTTP Request: GET https://api.example.com/v1/{stream}"
            f'?page={rng.randrange(10**4)}&per_page=100 "HTTP/1.1 200 OK"'
        )
    if pick < 0.97:
        return (
            f"{stamp} sluice INFO batch committed stream={stream} "
            f"records={rng.randrange(10**5)} bytes={rng.randrange(10**8)} run_id={uuid.uuid4()}"
        )
    return (
        f"{stamp} destination ERROR Traceback (most recent call last): File "
        f'"/usr/lib/python3.11/site-packages/destination/writer.py", line {rng.randrange(900)}'
    )


def generate_log(path: Path, size: int, hot_values: list[str], seed: int) -> int:
    """Write about ``size`` bytes of log lines; return how many hold a value."""
    rng = random.Random(seed)
    moment = START
    written = 0
    sensitive = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        buffer: list[str] = []
        while written < size:
            moment += timedelta(microseconds=rng.randrange(20_000))
            if rng.random() < 0.01:
                stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
                line = sensitive_line(rng, rng.choice(hot_values), stamp) + "\n"
                sensitive += 1
            else:
                line = plain_line(rng, moment) + "\n"
            buffer.append(line)
            written += len(line.encode())
            if len(buffer) >= 10_000:
                out.write("".join(buffer))
                buffer.clear()
        out.write("".join(buffer))
    return sensitive


# --- the three contenders ----------------------------------------------------------------------


def best_of(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def sluice_chunks(scrubber: LogScrubber, source: Path, target: Path) -> None:
    with (
        source.open(encoding="utf-8", newline="") as log,
        target.open("w", encoding="utf-8", newline="") as out,
    ):
        chunks: Iterator[str] = iter(lambda: log.read(1 << 20), "")
        for piece in scrubber.scrub_chunks(chunks):
            out.write(piece)


def sluice_lines(scrubber: LogScrubber, source: Path, target: Path) -> None:
    with (
        source.open(encoding="utf-8", newline="") as log,
        target.open("w", encoding="utf-8", newline="") as out,
    ):
        out.writelines(scrubber.scrub_stream(log))


def grep_count(values_file: Path, target: Path) -> int:
    done = subprocess.run(
        ["grep", "-F", "-c", "-f", str(values_file), str(target)],
        env={**os.environ, "LC_ALL": "C"},
        stdout=subprocess.PIPE,
        check=False,
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(f"grep failed with exit code {done.returncode}")
    return int(done.stdout)


def replace_loop(lines: list[str], values: list[str]) -> None:
    for line in lines:
        for value in values:
            line = line.replace(value, "****")


def read_prefix(path: Path, size: int) -> list[str]:
    lines: list[str] = []
    taken = 0
    with path.open(encoding="utf-8", newline="") as log:
        for line in log:
            if taken >= size:
                break
            lines.append(line)
            taken += len(line.encode())
    return lines


@dataclass
class Row:
    values: int
    patterns: int
    build_s: float
    chunks_mbs: float
    lines_mbs: float
    grep_mbs: float
    grep_lines: int
    replace_mbs: float
    replace_sampled_mb: float | None
    residual_lines: int


def measure(args: argparse.Namespace, work: Path, log: Path, values: list[str]) -> list[Row]:
    size = log.stat().st_size
    out = work / "scrubbed.log"
    rows: list[Row] = []
    for count in VALUE_COUNTS:
        chosen = values[:count]
        values_file = work / f"values-{count}.txt"
        values_file.write_text("".join(f"{v}\n" for v in chosen), encoding="utf-8")
        long_values_file = work / f"long-values-{count}.txt"
        long_values_file.write_text(
            "".join(f"{v}\n" for v in chosen if len(v) >= MIN_FREE_TEXT_LENGTH), encoding="utf-8"
        )

        started = time.perf_counter()
        scrubber = LogScrubber(cursor_values=chosen, secrets=(), cursor_fields=("updated_at",))
        build = time.perf_counter() - started
        chunks = best_of(args.repeat, lambda s=scrubber: sluice_chunks(s, log, out))
        residual = grep_count(long_values_file, out)
        lines = best_of(args.repeat, lambda s=scrubber: sluice_lines(s, log, out))
        residual += grep_count(long_values_file, out)
        patterns = scrubber.pattern_count
        del scrubber

        grep_lines = grep_count(values_file, log)
        grep = best_of(args.repeat, lambda f=values_file: grep_count(f, log))

        sampled = count > 10 or args.quick
        sample = read_prefix(log, int(args.replace_sample_mb * MB) if sampled else size)
        sample_size = sum(len(line.encode()) for line in sample)
        replace = best_of(1, lambda c=chosen, s=sample: replace_loop(s, c))
        del sample

        rows.append(
            Row(
                values=count,
                patterns=patterns,
                build_s=build,
                chunks_mbs=size / MB / chunks,
                lines_mbs=size / MB / lines,
                grep_mbs=size / MB / grep,
                grep_lines=grep_lines,
                replace_mbs=sample_size / MB / replace,
                replace_sampled_mb=sample_size / MB if sampled else None,
                residual_lines=residual,
            )
        )
        print(f"  {count:>6} values done", file=sys.stderr, flush=True)
    return rows


def report(rows: list[Row], size: int, sensitive: int, seconds: float) -> None:
    print(
        f"\nlog: {size / MB:.0f} MB, {sensitive:,} lines holding a value; bench {seconds:.0f} s\n"
    )
    print(
        "| values | spellings | build s | Sluice chunks MB/s | Sluice lines MB/s | grep -F MB/s "
        "| str.replace MB/s | Sluice/grep | Sluice/str.replace | lines left with a value |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        sampled = "" if row.replace_sampled_mb is None else f" (on {row.replace_sampled_mb:.1f} MB)"
        print(
            f"| {row.values:,} | {row.patterns:,} | {row.build_s:.2f} | {row.chunks_mbs:.0f} "
            f"| {row.lines_mbs:.0f} | {row.grep_mbs:.0f} | {row.replace_mbs:.2f}{sampled} "
            f"| {row.chunks_mbs / row.grep_mbs:.2f}x | {row.chunks_mbs / row.replace_mbs:,.0f}x "
            f"| {row.residual_lines} |"
        )
    print(
        "\nSluice = scrub_chunks (lines: scrub_stream), reading the file and writing the scrubbed "
        "copy; ratios use scrub_chunks.\ngrep counts the lines holding a value as is "
        f"({rows[0].grep_lines:,} at {rows[0].values} values); str.replace rates marked "
        "'(on N MB)' are timed on the first N MB and extrapolated.\n"
        "Targets at 1,000 values: Sluice/grep >= 0.5x, Sluice/str.replace >= 50x."
    )


# --- growth: the same scrub at 100 MB and 1 GB, each in a child process -------------------------

GROWTH_VALUES = 1_000
# "copy" scrubs nothing: it copies the log to the same output, 1 MiB at a time, to show what
# writing that much costs on this file system, apart from the scrubber.
GROWTH_APIS = ("chunks", "retain", "copy")


def scrub_child(log: Path, values_file: Path, api: str, out: Path) -> int:
    """In the child: build, scrub, and print seconds and memory as one JSON line."""
    values = values_file.read_text(encoding="utf-8").splitlines()
    started = time.perf_counter()
    scrubber = LogScrubber(cursor_values=values, secrets=(), cursor_fields=("updated_at",))
    build = time.perf_counter() - started
    rss_built = _status_kib("VmRSS")
    started = time.perf_counter()
    if api == "chunks":
        sluice_chunks(scrubber, log, out)
    elif api == "copy":
        with log.open("rb") as source, out.open("wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    else:
        import io

        with (
            log.open(encoding="utf-8", newline="") as lines,
            out.open("wb") as raw,
        ):
            text = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
            for piece in scrubber.scrub_chunks(lines):
                text.write(piece)
            text.flush()
            text.detach()
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "build_seconds": build,
                "rss_built_kib": rss_built,
                "hwm_kib": _status_kib("VmHWM"),
            }
        )
    )
    return 0


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _run_child(log: Path, values_file: Path, api: str, out: Path) -> dict[str, float]:
    argv = [sys.executable, __file__, "--scrub-child", str(log), str(values_file), api, str(out)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"scrub child failed: {argv}")
    result = json.loads(output)
    result["maxrss_kib"] = usage.ru_maxrss
    if out != Path(os.devnull):
        out.unlink(missing_ok=True)
    return result


def growth(args: argparse.Namespace, work: Path, values: list[str]) -> None:
    sizes = sorted(float(x) for x in args.growth_sizes.split(","))
    largest = work / f"run-{sizes[-1]:g}MB.log"
    print(f"generating {sizes[-1]:.0f} MB of log text in {work}", file=sys.stderr, flush=True)
    generate_log(largest, int(sizes[-1] * MB), values[:10], args.seed)
    logs = {sizes[-1]: largest}
    for size in sizes[:-1]:
        path = work / f"run-{size:g}MB.log"
        with largest.open("rb") as source, path.open("wb") as target:
            head = source.read(int(size * MB))
            target.write(head[: head.rfind(b"\n") + 1])
        logs[size] = path
    values_file = work / "values.txt"
    values_file.write_text("".join(f"{v}\n" for v in values[:GROWTH_VALUES]), encoding="utf-8")
    long_values = work / "long-values.txt"
    long_values.write_text(
        "".join(f"{v}\n" for v in values[:GROWTH_VALUES] if len(v) >= MIN_FREE_TEXT_LENGTH),
        encoding="utf-8",
    )
    results: dict[tuple[float, str], list[dict[str, float]]] = {}
    for number in range(1, args.repeat + 1):
        for size in sizes:
            for api in GROWTH_APIS:
                out = Path(os.devnull) if args.growth_discard else work / "scrubbed.log"
                result = _run_child(logs[size], values_file, api, out)
                results.setdefault((size, api), []).append(result)
                print(
                    f"  round {number}: {size:g} MB {api}: {result['seconds']:.2f} s, "
                    f"VmHWM {result['hwm_kib'] / 1024:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
    # The check: nothing registered is left in one scrubbed copy of the largest log.
    out = work / "scrubbed.log"
    scrubber = LogScrubber(
        cursor_values=values[:GROWTH_VALUES], secrets=(), cursor_fields=("updated_at",)
    )
    sluice_chunks(scrubber, largest, out)
    residual = grep_count(long_values, out)
    out.unlink()
    print(
        f"\nscrubber growth, {GROWTH_VALUES:,} values, output to "
        f"{'/dev/null' if args.growth_discard else 'a file'}, best of {args.repeat} (MB/s) and the "
        f"largest peak RSS of the runs; each run a child process; {os.cpu_count()} CPUs; load "
        f"average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}\n"
    )
    print(
        "| log | API | MB/s (best) | runs s | vs smallest | RSS once built MiB | "
        "peak RSS MiB (VmHWM) | peak vs smallest |"
    )
    print("| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for api in GROWTH_APIS:
        base_rate = base_hwm = 0.0
        for size in sizes:
            runs = results[(size, api)]
            actual = logs[size].stat().st_size / MB
            rate = actual / min(r["seconds"] for r in runs)
            hwm = max(r["hwm_kib"] for r in runs) / 1024
            built = max(r["rss_built_kib"] for r in runs) / 1024
            base_rate = base_rate or rate
            base_hwm = base_hwm or hwm
            print(
                f"| {actual:,.0f} MB | {api} | {rate:.0f} | "
                + " ".join(f"{r['seconds']:.2f}" for r in runs)
                + f" | {rate / base_rate - 1:+.0%} | {built:.0f} | {hwm:.0f} | "
                f"{hwm / base_hwm - 1:+.0%} |"
            )
    print(f"\nlines of the scrubbed {sizes[-1]:g} MB log still holding a value: {residual}")
    print("Targets: peak RSS flat, MB/s within 10% of the smallest size's.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100, help="log size (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing, best kept")
    parser.add_argument(
        "--replace-sample-mb",
        type=float,
        default=2,
        help="MB of log that the str.replace loop runs on at 1,000 and 10,000 values",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="sample str.replace at 10 values too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--growth", action="store_true", help="scrubber growth: 100 MB vs 1 GB, peak RSS"
    )
    parser.add_argument("--growth-sizes", default="100,1000", help="MB, for --growth")
    parser.add_argument(
        "--growth-discard",
        action="store_true",
        help="--growth: write the scrubbed text to /dev/null instead of a file (the scrubber "
        "alone, without the cost of writing a file of the log's size)",
    )
    parser.add_argument("--scrub-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scrub_child:
        log, values_file, api, out = args.scrub_child
        return scrub_child(Path(log), Path(values_file), api, Path(out))
    if shutil.which("grep") is None:
        parser.error("grep is not on PATH")

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-scrub-"))
    try:
        rng = random.Random(args.seed)
        values = make_values(rng, max(VALUE_COUNTS))
        if args.growth:
            growth(args, work, values)
            return 0
        log = work / "run.log"
        print(f"generating {args.size_mb:.0f} MB of log text in {work}", file=sys.stderr)
        sensitive = generate_log(log, int(args.size_mb * MB), values[:10], args.seed)
        rows = measure(args, work, log, values)
        report(rows, log.stat().st_size, sensitive, time.perf_counter() - started)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
