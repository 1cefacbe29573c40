"""`python -m experiments.bench_prepare [--gb 1,0.1] [--processes 1,2] [--dir /tmp/bench_prepare]`.

Throughput and memory of `prepare --hf parquet` on generated corpora: for each size, one parquet
file of Wikipedia text (the built-in corpus's 10,033 articles, shuffled and repeated to the size, in
row groups of about 64 MB) is prepared with each number of processes (prepare's CPU affinity: one
CPU encodes in-process, more start one worker per CPU). Prints a Markdown table: tokens/s, and the
peak resident memory of prepare and of prepare with its workers, sampled from /proc every 0.1 s
(Linux), so that memory can be seen not to grow with the corpus. Needs `pip install -e ".[hf]"`.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

from aed_jax import prepare

FLAGS = flags.FLAGS
flags.DEFINE_list("gb", ["1", "0.1"], "Corpus sizes in GB of UTF-8 text.")
flags.DEFINE_list("processes", ["1", "2"], "CPUs given to prepare, one run each (at most the CPUs there are).")
flags.DEFINE_string("dir", "/tmp/bench_prepare", "Folder for the corpora and the prepared files (deleted after).")

ROW_GROUP_BYTES = 64 << 20


def write_corpus(path: str, size: int) -> int:
    """A parquet file of `size` bytes of text (whole articles); returns the documents written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(prepare.wiki_vital_path(), encoding="utf-8") as f:
        articles = [a["extract"] for a in json.load(f).values()]
    rng, written, docs = random.Random(0), 0, 0
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.string())])) as writer:
        while written < size:
            rng.shuffle(articles)
            group, group_bytes = [], 0
            for text in articles:
                group.append(text)
                group_bytes += len(text.encode())
                if group_bytes >= ROW_GROUP_BYTES or written + group_bytes >= size:
                    break
            writer.write_table(pa.table({"id": range(docs, docs + len(group)), "text": group}))
            written, docs = written + group_bytes, docs + len(group)
    return docs


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        try:
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{task}/children") as f:
                    pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
        i += 1
    return pids


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def run(command: list[str], cpus: set[int]) -> tuple[float, int, int, str]:
    """(wall seconds, peak RSS of the process, peak RSS of it and its children, stdout) of `command`."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    peaks = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            pids = _tree(proc.pid)
            rss = [_rss(pid) for pid in pids]
            peaks[0], peaks[1] = max(peaks[0], rss[0]), max(peaks[1], sum(rss))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode:
        sys.exit(f"error: {' '.join(command)} failed (exit {proc.returncode})")
    return time.perf_counter() - start, peaks[0], peaks[1], out


def main(argv):
    del argv
    os.makedirs(FLAGS.dir, exist_ok=True)
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"{len(os.sched_getaffinity(0))} CPUs", flush=True)
    print("| corpus | text | documents | processes | tokens | wall | tokens/s | peak RSS prepare | "
          "peak RSS with workers |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    available = sorted(os.sched_getaffinity(0))
    for gb in map(float, FLAGS.gb):
        corpus = os.path.join(FLAGS.dir, f"corpus_{gb:g}gb.parquet")
        docs = write_corpus(corpus, int(gb * 1e9))
        for n in map(int, FLAGS.processes):
            out = os.path.join(FLAGS.dir, "out")
            command = [sys.executable, "-m", "aed_jax.prepare", "--hf", "parquet", "--data_files", corpus,
                       "--out", out, "--name", "bench"]
            wall, rss, rss_all, _ = run(command, set(available[:n]))
            with open(os.path.join(out, "meta.json")) as f:
                meta = json.load(f)
            tokens = meta["train"]["tokens"] + meta["val"]["tokens"]
            chars = meta["train"]["chars"] + meta["val"]["chars"]
            print(f"| {gb:g} GB | {chars / 1e6:,.0f} M chars | {docs:,} | {n} | {tokens / 1e6:,.1f} M | {wall:,.0f} s "
                  f"| {tokens / wall / 1e6:.2f} M | {rss / 2**20:,.0f} MiB | {rss_all / 2**20:,.0f} MiB |", flush=True)
            for name in os.listdir(out):
                os.remove(os.path.join(out, name))
        os.remove(corpus)
    print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}", flush=True)


if __name__ == "__main__":
    app.run(main)
