"""`python -m train.translate --mode=serve` as a user runs it: it answers exactly what `--mode=translate`
and `--mode=score` print, and SIGTERM or Ctrl-C answers the request in flight and exits 0."""

import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from serve_util import call

from train import translation

pytestmark = pytest.mark.slow  # subprocesses (see pyproject.toml's markers)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = ["forty two", "", "seven hundred and one", "three"]
PAIRS = ["forty two\tzweiundvierzig", "", "three\tdrei"]
ROWS = "--config.serve.row_sizes=(1,8)"


def _cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "train.translate", *args], input=stdin, capture_output=True,
                          text=True, cwd=REPO, timeout=300)


@pytest.fixture
def server(tiny_run_reader):
    proc = subprocess.Popen([sys.executable, "-m", "train.translate", f"--workdir={tiny_run_reader}", "--mode=serve",
                             "--port=0", ROWS], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"^Serving transformer \(step 4\) at (http://127\.0\.0\.1:\d+)/ \(Ctrl-C to stop\)$", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_answers_what_the_command_line_prints(server, tiny_run_reader):
    proc, url = server
    workdir = f"--workdir={tiny_run_reader}"
    printed = _cli(workdir, "--mode=translate", stdin="\n".join(SENTENCES) + "\n")
    assert printed.returncode == 0, printed.stderr
    assert call(url, "/translate", {"sentences": SENTENCES})[1]["translations"] == printed.stdout.splitlines()

    printed = _cli(workdir, "--mode=translate", "--nbest=3", "--config.decode.alpha=0.2",
                   stdin="\n".join(SENTENCES) + "\n")
    _, answer = call(url, "/translate", {"sentences": SENTENCES, "nbest": 3, "alpha": 0.2})
    nbest = [[translation.Hypothesis(h["translation"], -math.inf if h["score"] is None else h["score"]) for h in row]
             for row in answer["nbest"]]
    assert translation.nbest_lines(nbest) == printed.stdout.splitlines()

    printed = _cli(workdir, "--mode=score", stdin="\n".join(PAIRS) + "\n")
    pairs = [line.split("\t") if line else None for line in PAIRS]
    _, answer = call(url, "/score", {"pairs": pairs})
    scores = [None if s is None else translation.Score(s["total"], s["mean"]) for s in answer["scores"]]
    assert translation.score_lines(scores) == printed.stdout.splitlines()
    assert proc.poll() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_answers_the_request_in_flight_and_exits_0(server, signum):
    proc, url = server
    answers = []
    # Beam search with an n-best of 8 is not compiled at start-up: this request takes a while.
    body = {"sentences": [f"{n} hundred and one" for n in ("two", "three", "four", "five")] * 8, "nbest": 8}
    thread = threading.Thread(target=lambda: answers.append(call(url, "/translate", body)))
    thread.start()
    time.sleep(0.5)
    proc.send_signal(signum)
    thread.join(timeout=120)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    (status, answer), = answers
    assert status == 200 and len(answer["translations"]) == 32 and len(answer["nbest"][0]) == 8
    assert "Traceback" not in err
    with pytest.raises(OSError):
        call(url, "/health", timeout=5)


def test_a_taken_port_is_one_line(tiny_run_reader):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        ran = _cli(f"--workdir={tiny_run_reader}", "--mode=serve", f"--port={taken.getsockname()[1]}")
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines()[-1].startswith("error: --host/--port: cannot listen on 127.0.0.1:")
    assert len([line for line in ran.stderr.splitlines() if line.startswith("error:")]) == 1


def test_load_benchmark_runs_and_counts_failures(tiny_run_reader, tmp_path):
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("forty two\nseven hundred and one\n\nthree\n", encoding="utf-8")
    output = tmp_path / "load.md"
    ran = subprocess.run([sys.executable, "-m", "benchmarks.serve_load", f"--workdir={tiny_run_reader}",
                          f"--input_file={sentences}", "--clients", "1", "4", "--requests=8", "--seconds=60",
                          "--repeats=1", "--set=decode.max_length_b=8", f"--output={output}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    table = output.read_text(encoding="utf-8")
    assert table in ran.stdout
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in table.splitlines() if
            line.startswith("| direct") or line.startswith("| server")}
    assert list(rows) == ["direct, 1 sentence a call", "direct, 32 sentences a call", "server, 1 client",
                          "server, 4 clients"]
    assert all(int(r[0]) > 0 and r[1] == "0" and float(r[2]) > 0 for r in rows.values()), rows
