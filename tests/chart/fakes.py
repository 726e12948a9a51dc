"""Recorded fakes of the tools the kind scripts call (docker, kind, kubectl, helm, curl, sleep).

`FakeTools(tmp_path)` puts one executable per tool in a bin directory placed first on PATH. Each
call appends {"tool", "argv"} to a JSON-lines log and answers from the rules given with `on`:
the first rule of that tool whose regex matches the space-joined arguments, taking its answers
in order and repeating the last one (so "fails twice, then succeeds" is three answers). A call
no rule matches succeeds with no output. A faked `curl -o FILE` writes its answer to FILE (`-o /dev/null`: to stdout, as -w would). `sleep` is faked too, so retry loops run instantly
while their waits stay countable.

Run as a program (`python fakes.py TOOL ARGS...`), this file is the fake itself.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

TOOLS = ("docker", "kind", "kubectl", "helm", "curl", "sleep")


class FakeTools:
    def __init__(self, tmp_path: pathlib.Path, tools=TOOLS):
        self.dir = tmp_path / "fakes"
        self.bin = self.dir / "bin"
        self.bin.mkdir(parents=True)
        self.log = self.dir / "calls.jsonl"
        self.rules_file = self.dir / "rules.json"
        self.rules = []
        for tool in tools:
            shim = self.bin / tool
            shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{pathlib.Path(__file__).resolve()}" {tool} "$@"\n')
            shim.chmod(0o755)

    def on(self, tool: str, pattern: str, *answers):
        """Answers for calls of `tool` whose arguments match `pattern` (re.search). Each answer is
        stdout text, an int exit status, or a (stdout, status[, stderr]) tuple."""
        norm = []
        for a in answers or ("",):
            if isinstance(a, int):
                a = ("", a)
            elif isinstance(a, str):
                a = (a, 0)
            norm.append({"stdout": a[0], "rc": a[1], "stderr": a[2] if len(a) > 2 else ""})
        self.rules.append({"tool": tool, "pattern": pattern, "answers": norm})
        return self

    def without(self, tool: str):
        """Removes a tool (as if it were not installed)."""
        (self.bin / tool).unlink()

    def run(self, script: pathlib.Path, env=None, timeout=60) -> subprocess.CompletedProcess:
        self.rules_file.write_text(json.dumps(self.rules))
        full_env = {**os.environ, **(env or {}), "PATH": f"{self.bin}:{os.environ['PATH']}",
                    "FAKE_LOG": str(self.log), "FAKE_RULES": str(self.rules_file), "FAKE_STATE": str(self.dir)}
        return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=full_env,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def calls(self, tool=None) -> list:
        """The recorded calls (argument lists), of one tool or (tool, args) of all."""
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        if tool is None:
            return [(e["tool"], e["argv"]) for e in entries]
        return [e["argv"] for e in entries if e["tool"] == tool]

    def lines(self, tool=None) -> list:
        """The recorded calls as command lines ("docker build ...")."""
        return [" ".join([t, *a]) for t, a in self.calls()] if tool is None else \
            [" ".join([tool, *a]) for a in self.calls(tool)]


def _main(tool: str, argv: list) -> int:
    log = os.environ["FAKE_LOG"]
    with open(log, "a") as f:
        f.write(json.dumps({"tool": tool, "argv": argv}) + "\n")
    if "-" in argv:  # `kubectl apply -f -`: drain the pipe so its writer never blocks
        sys.stdin.read()
    rules = json.loads(pathlib.Path(os.environ["FAKE_RULES"]).read_text())
    joined = " ".join(argv)
    for n, rule in enumerate(rules):
        if rule["tool"] == tool and re.search(rule["pattern"], joined):
            counter = pathlib.Path(os.environ["FAKE_STATE"]) / f"rule-{n}.count"
            used = int(counter.read_text()) if counter.exists() else 0
            counter.write_text(str(used + 1))
            answer = rule["answers"][min(used, len(rule["answers"]) - 1)]
            out = argv[argv.index("-o") + 1] if tool == "curl" and "-o" in argv[:-1] else None
            if out and out != "/dev/null":
                if answer["rc"] == 0:  # like curl -f: no file on an HTTP error
                    pathlib.Path(out).write_text(answer["stdout"])
            else:  # with -o /dev/null the answer is what -w prints
                sys.stdout.write(answer["stdout"])
            sys.stderr.write(answer["stderr"])
            return answer["rc"]
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2:]))
