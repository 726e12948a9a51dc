"""The README's "Using the API" commands, run as written against a real Profile API and a
cache-refresh consumer (what `make dev` runs), on the real local stack; each command's
`# → ...` comment is checked against what it printed.

Needs the stack (`scripts/stack up; eval "$(scripts/stack env)"`) and the debug binaries
(`cargo build --bins -p profile-api -p profile-consumer`, done by `make test` before this step);
it fails, never skips, without them. It starts its own processes on free ports with a fresh
database (`t_<uuid>`, the name `scripts/stack` cleans up after an hour) and its own consumer
group, so it can run beside `make dev`.
"""
import dataclasses
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

import docsrc

ROOT = docsrc.ROOT
README_URL = "http://127.0.0.1:8080"


def readme_commands(text: str) -> list:
    """(command, expectations) of the first ```sh block under "## Using the API". A command
    is a line, or lines joined by a trailing `\\`; its expectations are the comma-separated
    items after `# →` on its last line."""
    section = text.split("## Using the API", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands, pending = [], []
    for line in block.splitlines():
        pending.append(line)
        if line.rstrip().endswith("\\"):
            continue
        command = "\n".join(pending)
        pending = []
        expect = []
        m = re.search(r"#\s*→\s*(.+)$", command)
        if m:
            expect = [e.strip() for e in re.split(r",\s*(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", m.group(1))]
        commands.append((command, expect))
    return commands


def check_output(output: str, expect: list) -> list:
    """What of `expect` the output of one command does not show. Items: a status code (`201`),
    a header (`etag: "1"`, `x-cache: miss or hit`), or text the output contains (`"country":"DE"`,
    `application/problem+json`)."""
    problems = []
    status = re.search(r"^HTTP/[\d.]+ (\d{3})", output, re.M)
    headers = {}
    for line in re.split(r"\r?\n\r?\n", output, maxsplit=1)[0].splitlines()[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    for item in expect:
        if re.fullmatch(r"\d{3}", item):
            got = status.group(1) if status else None
            if got != item:
                problems.append(f"status {got}, expected {item}")
        elif re.fullmatch(r"[A-Za-z][A-Za-z-]*: .+", item):
            name, wanted = item.split(": ", 1)
            alternatives = [w.strip() for w in wanted.split(" or ")]
            got = headers.get(name.lower())
            if got not in alternatives:
                problems.append(f"{name}: {got!r}, expected {' or '.join(alternatives)}")
        elif item not in output:
            problems.append(f"{item!r} not in the output")
    return problems


# --- self-tests of the parser and the matcher -----------------------------------------------

def test_the_readme_block_is_parsed_into_commands_with_expectations():
    commands = readme_commands(docsrc.read("README.md"))
    assert len(commands) >= 8
    put = next(c for c in commands if "-X PUT" in c[0])
    assert "\n" in put[0] and put[1] == ["201", 'etag: "1"']
    assert all(expect for command, expect in commands if command.lstrip().startswith("curl"))


def test_the_matcher_refuses_wrong_output():
    output = 'HTTP/1.1 200 OK\r\netag: "2"\r\nx-cache: miss\r\n\r\n{"country":"DE"}'
    assert check_output(output, ["200", 'etag: "2"', "x-cache: miss or hit", '"country":"DE"']) == []
    assert check_output(output, ["201"]) == ["status 200, expected 201"]
    assert check_output(output, ['etag: "1"'])
    assert check_output(output, ["x-cache: hit"])
    assert check_output(output, ['"country":"PT"'])


# --- the real run -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run `scripts/stack up` and `eval \"$(scripts/stack env)\"` first")
    return value


def binaries() -> pathlib.Path:
    target = os.environ.get("CARGO_TARGET_DIR") or str(pathlib.Path.home() / ".cache/statecast/target")
    bin_dir = pathlib.Path(os.environ.get("STATECAST_BIN_DIR") or pathlib.Path(target) / "debug")
    for name in ("profile-api", "profile-consumer"):
        if not os.access(bin_dir / name, os.X_OK):
            pytest.fail(f"{bin_dir / name} is missing: cargo build --bins -p profile-api -p profile-consumer "
                        "(or set STATECAST_BIN_DIR)")
    return bin_dir


def psql(url: str, sql: str) -> None:
    subprocess.run(["psql", "-w", "-v", "ON_ERROR_STOP=1", "-q", "-d", url, "-c", sql], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=30)


def wait_ready(url: str, process: subprocess.Popen, log: pathlib.Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url}: the process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not ready after {seconds} s:\n{log.read_text()[-3000:]}")


@dataclasses.dataclass
class DevLike:
    api: str            # the API's base URL
    database_url: str   # the fresh database both use
    consumer_port: int  # the cache-refresh consumer's /metrics port


@pytest.fixture
def dev_like(tmp_path):
    """The API and a cache-refresh consumer as `make dev` starts them, on free ports, with a
    fresh database and consumer group. Yields the API's base URL."""
    database_url = required_env("DATABASE_URL")
    redis_url = required_env("REDIS_URL")
    brokers = required_env("KAFKA_BROKERS")
    if not shutil.which("curl") or not shutil.which("psql"):
        pytest.fail("curl and psql are needed (scripts/stack up installs postgresql-client)")
    bin_dir = binaries()
    name = f"t_{int(time.time() * 1000):012x}{secrets.token_hex(10)}"
    psql(database_url, f'CREATE DATABASE "{name}"')
    url = urllib.parse.urlsplit(database_url)._replace(path=f"/{name}").geturl()
    api_port, consumer_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "RUST_LOG", "KAFKA_", "AUTH_"))}
    base |= {"OTEL_SDK_DISABLED": "true", "KAFKA_BROKERS": brokers, "REDIS_URL": redis_url, "DATABASE_URL": url}
    processes = []
    try:
        api_log = tmp_path / "profile-api.log"
        api = subprocess.Popen([bin_dir / "profile-api"], stdout=api_log.open("w"), stderr=subprocess.STDOUT,
                               env=base | {"AUTH_DISABLED": "true", "LISTEN_ADDR": f"127.0.0.1:{api_port}"})
        processes.append(api)
        consumer_log = tmp_path / "consumer.log"
        consumer = subprocess.Popen(
            [bin_dir / "profile-consumer"], stdout=consumer_log.open("w"), stderr=subprocess.STDOUT,
            env=base | {"KAFKA_GROUP_ID": f"docs-check-{secrets.token_hex(6)}", "KAFKA_TOPICS": "user-events",
                        "CONSUMER_HANDLER": "cache-refresh", "KAFKA_START_POSITION": "latest",
                        "METRICS_ADDR": f"127.0.0.1:{consumer_port}"})
        processes.append(consumer)
        wait_ready(f"http://127.0.0.1:{api_port}/readyz", api, api_log, 60)
        wait_ready(f"http://127.0.0.1:{consumer_port}/readyz", consumer, consumer_log, 60)
        yield DevLike(api=f"http://127.0.0.1:{api_port}", database_url=url, consumer_port=consumer_port)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        try:
            psql(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except subprocess.CalledProcessError:
            pass


def test_the_readme_api_commands_print_what_the_readme_says(dev_like, tmp_path):
    commands = readme_commands(docsrc.read("README.md"))
    script = ["set -u"]
    for i, (command, _) in enumerate(commands):
        script.append(f"printf '\\n@@command {i}@@\\n'")
        script.append(command.replace(README_URL, dev_like.api))
    (tmp_path / ".curlrc").write_text("max-time = 15\n")
    run = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CURL_HOME": str(tmp_path)}, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    outputs = re.split(r"\n@@command \d+@@\n", run.stdout)[1:]
    assert len(outputs) == len(commands), run.stdout
    problems = []
    for (command, expect), output in zip(commands, outputs):
        for problem in check_output(output, expect):
            problems.append(f"{command}\n  -> {problem}\n  output: {output[:600]!r}")
    assert not problems, "\n\n".join(problems)


def test_make_flow_shows_each_consumers_records_after_a_write(dev_like, tmp_path):
    """`scripts/flow` (`make flow`) against the running pair: after one PUT, the consumer's line
    shows the processed record, and every section is printed."""
    user = f"flow-{secrets.token_hex(4)}"
    put = subprocess.run(["curl", "-fsS", "-X", "PUT", f"{dev_like.api}/v1/profiles/{user}",
                          "-H", "content-type: application/json",
                          "-d", '{"name":"Flow","email":"flow@example.com","country":"PT"}'],
                         capture_output=True, text=True, timeout=30)
    assert put.returncode == 0, put.stderr
    env = {**os.environ, "DATABASE_URL": dev_like.database_url,
           "FLOW_CONSUMERS": f"cache-refresh:{dev_like.consumer_port}"}
    deadline = time.time() + 30
    while True:
        run = subprocess.run([str(docsrc.ROOT / "scripts/flow")], capture_output=True, text=True,
                             timeout=60, env=env)
        line = next((l for l in run.stdout.splitlines() if l.strip().startswith("cache-refresh")), "")
        if "processed=1" in line or time.time() > deadline:
            break
        time.sleep(0.5)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "processed=1" in line and "lag=0" in line, run.stdout
    for section in ("== audit", "== analytics", "== email", "== consumers", "== the last write's trace"):
        assert section in run.stdout, run.stdout
