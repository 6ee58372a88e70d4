"""Shared pieces of the reproduction scripts: options, running pynas commands, reading runs, writing tables.

Every script is a short sequence of `python -m pynas ...` commands (one process each, so runs are isolated and
resumable: a command whose output already exists is not run again). `--smoke` runs the same sequence on the
embedded digits at tiny sizes; its numbers only show that the pipeline works and are labelled "smoke".
"""

import argparse
import json
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import threading
import traceback
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

HERE = os.path.dirname(os.path.abspath(__file__))

# A fresh `python -m pynas` spends about 6 s of CPU importing torch, torch's compiler front end (torch.optim
# imports it on first use) and matplotlib: more than a smoke command's own work. Commands therefore run in
# processes forked from a server that imported these once and never ran a torch op: each command still has a
# process of its own (isolated as a subprocess would be), without the imports.
PRELOAD = ["pynas.cli", "torch._dynamo", "matplotlib.pyplot"]

# The smallest sizes that exercise every command (docs of each script say what a real run uses instead).
SMOKE_SEARCH = ["--dataset", "digits", "--epochs", "1", "--C", "2", "--layers", "3", "--steps", "2",
                "--batch-size", "256"]
SMOKE_TRAIN = ["--dataset", "digits", "--C", "2", "--layers", "3", "--epochs", "1", "--batch-size", "256"]
SMOKE_PT = ["--tune-epochs", "0", "--val-batches", "1"]


def parse_args(name, description, add_arguments=None, argv=None):
    """The options every script shares; `add_arguments(parser)` adds a script's own."""
    parser = argparse.ArgumentParser(prog=f"experiments/{name}.py", description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on the embedded digits (checks the pipeline; numbers meaningless)")
    parser.add_argument("--data", metavar="DIR", help="dataset folder for a real run (CIFAR-10 etc.)")
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100", "svhn"),
                        help="dataset of a real run")
    parser.add_argument("--out", default=os.path.join(HERE, "results", name), help="where runs and tables go")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (the papers average 4: 0,1,2,3)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="for search and train")
    parser.add_argument("--jobs", type=int, default=None,
                        help="commands run at once (default: 2 with --smoke, else 1)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if not args.smoke and not args.data:
        parser.error("a real run needs --data DIR (or use --smoke)")
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s != ""]
    if args.jobs is None:
        args.jobs = min(2, os.cpu_count() or 1) if args.smoke else 1
    args.mode = "smoke" if args.smoke else "real"
    os.makedirs(args.out, exist_ok=True)
    return args


class PynasError(RuntimeError):
    pass


class ProcessDied(PynasError):
    pass


class Runner:
    """Runs pynas commands for one script, logs each to <out>/commands.log, skips those already done."""

    def __init__(self, args):
        self.args = args
        self.commands = []
        self._lock = threading.Lock()
        self._pool = None

    # data and size options -------------------------------------------------------------------------------------
    def search_data(self):
        if self.args.smoke:
            return list(SMOKE_SEARCH)
        return ["--dataset", self.args.dataset, "--data", self.args.data, "--device", self.args.device]

    def train_data(self):
        if self.args.smoke:
            return list(SMOKE_TRAIN)
        return ["--dataset", self.args.dataset, "--data", self.args.data, "--device", self.args.device]

    def path(self, *parts):
        return os.path.join(self.args.out, *parts)

    # running ---------------------------------------------------------------------------------------------------
    def pynas(self, argv, done=None):
        """Runs `python -m pynas argv`; returns its stdout. `done`: a file whose existence means it already ran."""
        argv = [str(a) for a in argv]
        line = "python -m pynas " + " ".join(shlex.quote(a) for a in argv)
        with self._lock:
            self.commands.append(line)
        if done and os.path.exists(done) and os.path.exists(done + ".stdout"):
            with open(done + ".stdout") as f:
                return f.read()
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads is None and self.args.jobs > 1:  # several commands at once: one thread each unless told otherwise
            threads = "1"
        with tempfile.TemporaryDirectory() as tmp:
            streams = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            try:
                code = self.in_process(run_pynas, argv, threads and int(threads), *streams)
            except ProcessDied as died:
                code = str(died)
            stdout, stderr = (read_text(path) if os.path.exists(path) else "" for path in streams)
        with self._lock, open(self.path("commands.log"), "a") as f:
            f.write(f"$ {line}\n{stdout}\n{stderr}\n[exit {code}]\n\n")
        if code != 0:
            raise PynasError(f"{line}\nexit {code}: {stderr[-2000:]}")
        if done and os.path.exists(done):
            with open(done + ".stdout", "w") as f:
                f.write(stdout)
        return stdout

    def in_process(self, fn, *args):
        """``fn(*args)`` in a process of its own forked from the server; raises
        :class:`ProcessDied` if that process dies (a signal, the OOM killer): the
        pool is then replaced, so later commands run."""
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(PRELOAD)
                # One command per process: nothing a command leaves behind reaches the next.
                self._pool = ProcessPoolExecutor(self.args.jobs, mp_context=context, max_tasks_per_child=1)
            pool = self._pool
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            raise ProcessDied("its process died without a result (a signal, the OOM killer, or a failed start)") from None

    def parallel(self, fn, items):
        """fn(item) for every item, `--jobs` at a time; results in order."""
        items = list(items)
        if self.args.jobs <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(self.args.jobs) as pool:
            return list(pool.map(fn, items))

    # the pynas steps -------------------------------------------------------------------------------------------
    def search(self, name, preset=None, extra=(), seed=0, smoke_extra=()):
        """`pynas search --preset P [extra]` into <out>/<name>; returns the run directory."""
        run = self.path(name)
        argv = ["search"] + (["--preset", preset] if preset else []) + self.search_data()
        argv += list(extra) + (list(smoke_extra) if self.args.smoke else [])
        argv += ["--seed", seed, "--out", run, "--quiet"]
        if _interrupted(run, "genotype.txt"):
            argv = ["search", "--resume", run, "--quiet"]
        self.pynas(argv, done=os.path.join(run, "genotype.txt"))
        return run

    def select(self, run, method, smoke_extra=SMOKE_PT):
        """`pynas select --run RUN --method M`; returns the genotype text (also written to RUN/select-M/)."""
        out = os.path.join(run, f"select-{method}")
        argv = ["select", "--run", run, "--method", method, "--out", out, "--quiet"]
        if self.args.smoke and method in ("pt", "pt-mag"):
            argv += list(smoke_extra)
        stdout = self.pynas(argv, done=os.path.join(out, "genotype.txt"))
        genotype = last_line_value(stdout, "genotype:")
        os.makedirs(out, exist_ok=True)  # the rule-based selections print their genotype and write nothing
        path = os.path.join(out, "genotype.txt")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(genotype + "\n")
            with open(path + ".stdout", "w") as f:
                f.write(stdout)
        return genotype

    def train(self, name, genotype, seed=0, extra=(), real_extra=()):
        """`pynas train --genotype G` into <out>/<name>; returns its result.json."""
        run = self.path(name)
        argv = ["train", "--genotype", genotype] + self.train_data() + list(extra)
        argv += ([] if self.args.smoke else list(real_extra)) + ["--seed", seed, "--out", run, "--quiet"]
        if _interrupted(run, "result.json"):
            argv = ["train", "--resume", run, "--quiet"]
        self.pynas(argv, done=os.path.join(run, "result.json"))
        return read_json(os.path.join(run, "result.json"))

    def evaluate(self, run, genotype=None):
        """`pynas evaluate --run RUN`: (supernet validation accuracy, child's accuracy inside the supernet)."""
        stdout = self.pynas(["evaluate", "--run", run] + (["--genotype", genotype] if genotype else []))
        return (float(last_line_value(stdout, "supernet validation accuracy:")),
                float(last_line_value(stdout, "child (supernet weights, no fine-tuning):")))

    def analyze(self, analysis, out, *argv):
        """`pynas analyze ANALYSIS --out OUT ...`; returns stdout."""
        return self.pynas(["analyze", analysis, "--out", out] + list(argv))


def run_pynas(argv, threads, stdout_path, stderr_path):
    """`python -m pynas argv` in this process (one forked for it): the exit status;
    stdout and stderr (C-level writes too) go to the two files."""
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    import torch

    from pynas.cli import main
    if threads:
        torch.set_num_threads(threads)
    try:
        code = main(argv)
    except SystemExit as exit:  # as the interpreter would: a message goes to stderr and exits 1
        code = exit.code if isinstance(exit.code, int) or exit.code is None else 1
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code or 0


def _interrupted(run, final):
    """A run that left a checkpoint but not its final file: continue it with --resume."""
    return os.path.exists(os.path.join(run, "checkpoint.pt")) and not os.path.exists(os.path.join(run, final))


# reading runs --------------------------------------------------------------------------------------------------
def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_metrics(run):
    """A search run's metrics.jsonl, one dict per epoch."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_text(path):
    with open(path) as f:
        return f.read().strip()


def last_line_value(stdout, prefix):
    """The text after `prefix` on the last stdout line that starts with it."""
    values = [line[len(prefix):].strip() for line in stdout.splitlines() if line.startswith(prefix)]
    if not values:
        raise PynasError(f"no line starting with {prefix!r} in:\n{stdout[-2000:]}")
    return values[-1]


def genotype_ops(genotype, cell="normal"):
    """[(op, input), ...] of one cell of a DARTS-style genotype text (pynas' parser)."""
    from pynas.genotype import Genotype
    return list(getattr(Genotype.parse(genotype), cell))


def kept_edges(genotype, cell="normal"):
    """Edges of a cell whose operation is not `none` (SNAS' child graph drops the others)."""
    return sum(op != "none" for op, _ in genotype_ops(genotype, cell))


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(mean, std, digits=2):
    """'m ± s' (or '-' when absent)."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if not std else f"{mean:.{digits}f} ± {std:.{digits}f}"


# writing tables ------------------------------------------------------------------------------------------------
def write_table(args, runner, name, title, source, columns, rows, notes=()):
    """<out>/<name>.json and <name>.md: rows are dicts keyed by `columns` (plus any extra keys, kept in JSON)."""
    mode_note = ("SMOKE run (embedded 8x8 digits, tiny sizes): the pynas numbers only show that the pipeline runs; "
                 "they are not comparable with the paper's." if args.smoke else
                 f"Real run on {args.dataset} ({args.data}), seeds {args.seeds}.")
    table = {"experiment": name, "title": title, "paper_source": source, "mode": args.mode, "seeds": args.seeds,
             "columns": columns, "rows": rows, "notes": [mode_note] + list(notes), "commands": runner.commands}
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(table, f, indent=1)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(markdown(table))
    print(markdown(table))
    return table


def markdown(table):
    cols = table["columns"]
    lines = [f"## {table['title']} ({table['mode']})", "", f"Paper: {table['paper_source']}", "",
             "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for row in table["rows"]:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
    lines.append("")
    lines += [f"- {n}" for n in table["notes"]]
    return "\n".join(lines) + "\n"


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


# plots ---------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def bar_plot(path, labels, series, ylabel, title):
    """Grouped bars: series = {legend: [value per label]} (None: no bar)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(labels) * max(1, len(series)) / 2 + 2), 3.5))
    width = 0.8 / max(1, len(series))
    for k, (legend, values) in enumerate(series.items()):
        xs = [i + k * width for i, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width, label=legend)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    return _finish(plt, fig, ax, path, ylabel, title)


def line_plot(path, curves, xlabel, ylabel, title):
    """curves = {legend: (xs, ys)}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for legend, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", label=legend)
    ax.set_xlabel(xlabel)
    return _finish(plt, fig, ax, path, ylabel, title)


def _finish(plt, fig, ax, path, ylabel, title):
    """Labels, legend and the PNG of a finished plot."""
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
