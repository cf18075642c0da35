"""`[notify]`: a command and a webhook told how a run ended; their failures are warnings.

Real runs (digits, one epoch), a real /bin/sh command, a real HTTP server on localhost.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from durable_helpers import (
    events_jsonl,
    finish,
    mpt,
    next_event,
    profile_dict,
    spawn_mpt,
    start,
    train,
    wait_for,
    write_toml,
)

from engine.errors import ProfileError
from engine.profile import profile_from_dict

HUGE_LR = {"run": {"epochs": 2}, "optim": {"name": "sgd", "lr": 1e6}}  # a non-finite loss


def recording_command(tmp_path: Path) -> str:
    """A command that writes its stdin to stdin.json and its MPT_* variables to env.txt."""
    stdin, env = shlex.quote(str(tmp_path / "stdin.json")), shlex.quote(str(tmp_path / "env.txt"))
    return f"cat > {stdin}; env | grep '^MPT_' > {env}"


def recorded(tmp_path: Path) -> tuple[dict, dict[str, str]]:
    message = json.loads((tmp_path / "stdin.json").read_text())
    lines = (tmp_path / "env.txt").read_text().splitlines()
    return message, dict(line.split("=", 1) for line in lines)


def notify_warnings(events) -> list[str]:
    return [e.message for e in events if e.kind == "warning" and "[notify]" in e.message]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once it is closed


class Hook:
    """A webhook receiver on localhost: every POST's path, headers and body."""

    def __init__(self, status: int = 200):
        self.posts: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append({"path": self.path, "headers": self.headers, "body": body})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T0/SECRET"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_a_finished_run_runs_the_command_with_the_event_on_stdin_and_mpt_variables(tmp_path):
    done = train(
        profile_dict(tmp_path / "runs", {"notify": {"command": recording_command(tmp_path)}}),
        write=True,
    )

    message, env = recorded(tmp_path)
    assert message["kind"] == "run_finished" and message["reason"] == "completed"
    assert message["event"] == "finished" and message["run_name"] == "tiny"
    assert message["run_dir"] == str(done.run_dir)
    assert message["headline"].startswith("val_acc=0.")
    assert "finished" in message["text"] and str(done.run_dir) in message["text"]
    assert env == {
        "MPT_EVENT": "finished",
        "MPT_REASON": "completed",
        "MPT_RUN_NAME": "tiny",
        "MPT_RUN_DIR": str(done.run_dir),
        "MPT_HEADLINE": message["headline"],
    }
    # Told after the final checkpoint; events.jsonl still ends with how the run ended.
    assert (done.run_dir / "checkpoints" / "last.pt").is_file()
    assert events_jsonl(done.run_dir)[-1]["kind"] == "run_finished"
    assert notify_warnings(done.events) == []


def test_the_webhook_gets_the_event_as_a_json_post(tmp_path):
    with Hook() as hook:
        done = train(profile_dict(tmp_path / "runs", {"notify": {"webhook": hook.url}}), write=True)

    assert len(hook.posts) == 1
    post = hook.posts[0]
    assert post["path"] == "/hooks/T0/SECRET"
    assert post["headers"]["Content-Type"] == "application/json"
    body = json.loads(post["body"])
    assert body["kind"] == "run_finished" and body["event"] == "finished"
    assert body["run_dir"] == str(done.run_dir) and body["run_name"] == "tiny"
    assert body["text"].startswith("mpt: run tiny finished") and body["headline"] in body["text"]
    assert notify_warnings(done.events) == []


def test_a_failing_command_and_an_unreachable_webhook_are_warnings_and_the_run_exits_0(tmp_path):
    port = closed_port()
    notify = {"command": "echo boom >&2; exit 3", "webhook": f"http://127.0.0.1:{port}/x/SECRET"}
    profile = write_toml(tmp_path / "p.toml", profile_dict(tmp_path / "runs", {"notify": notify}))

    r = mpt("run", profile, cwd=tmp_path)

    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "[notify]" in line]
    assert "warning: [notify] the command exited with status 3: boom" in warnings
    unreachable = f"warning: [notify] the webhook at http://127.0.0.1:{port} could not be reached"
    assert any(line.startswith(unreachable) for line in warnings), warnings
    assert "SECRET" not in r.stderr  # a hook's path is its password: never printed
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    last = events_jsonl(run_dir)[-1]
    assert last["kind"] == "run_finished" and last["reason"] == "completed"


def test_a_webhook_that_answers_an_http_error_is_a_warning_on_the_runs_events(tmp_path):
    with Hook(status=500) as hook:
        done = train(profile_dict(tmp_path / "runs", {"notify": {"webhook": hook.url}}), write=True)

    assert done.reason == "completed"
    assert notify_warnings(done.events) == [
        f"[notify] the webhook at http://127.0.0.1:{hook.server.server_port} "
        "answered HTTP 500 Internal Server Error"
    ]


def test_a_command_past_its_timeout_is_killed_with_what_it_started(tmp_path, monkeypatch):
    import engine.notify

    monkeypatch.setattr(engine.notify, "COMMAND_TIMEOUT_S", 1.0)
    pid_file = tmp_path / "child.pid"
    command = f"sleep 60 & echo $! > {shlex.quote(str(pid_file))}; wait"
    start = time.monotonic()
    done = train(profile_dict(tmp_path / "runs", {"notify": {"command": command}}), write=True)

    assert time.monotonic() - start < 60
    assert done.reason == "completed"
    assert notify_warnings(done.events) == [
        "[notify] the command did not finish within 1 s and was killed"
    ]
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # the background sleep went with its shell
        for _ in range(50):
            os.kill(child, 0)
            time.sleep(0.05)


def test_endings_not_named_in_on_notify_nothing(tmp_path):
    notify = {"command": recording_command(tmp_path), "on": ["failed"]}
    done = train(profile_dict(tmp_path / "runs", {"notify": notify}), write=True)

    assert done.reason == "completed"
    assert not (tmp_path / "stdin.json").exists()


def test_a_failed_run_notifies_failed_with_its_error(tmp_path):
    notify = {"command": recording_command(tmp_path)}
    done = train(
        profile_dict(tmp_path / "runs", HUGE_LR, {"notify": notify}), write=True, check=False
    )

    assert done.reason == "failed"
    message, env = recorded(tmp_path)
    assert message["kind"] == "run_failed" and message["event"] == "failed"
    assert message["error"] == done.run.error and "traceback" not in message
    assert env["MPT_EVENT"] == "failed" and env["MPT_REASON"] == "failed"
    assert message["text"].endswith(f"{done.run.error} - {done.run_dir}")


def test_a_stop_notifies_stopped_when_on_names_it(tmp_path):
    notify = {"command": recording_command(tmp_path), "on": ["stopped"]}
    run = start(profile_dict(tmp_path / "runs", {"run": {"epochs": 50}}, {"notify": notify}))
    next_event(run, "step", 60)  # training, past setup
    run.stop()
    done = finish(run)

    assert done.reason == "stopped"
    message, env = recorded(tmp_path)
    assert env["MPT_EVENT"] == "stopped" and env["MPT_REASON"] == "stopped"


@pytest.mark.parametrize(
    ("notify", "key", "says"),
    [
        ({"on": ["finsihed"]}, "notify.on", "did you mean 'finished'?"),
        ({"on": ["done"]}, "notify.on", "unknown ending 'done'; use finished, early_stopped"),
        (
            {"webhook": "hooks.example.com/T0"},
            "notify.webhook",
            "must be an http:// or https:// URL",
        ),
        (
            {"webhook": "ftp://example.com/x"},
            "notify.webhook",
            "must be an http:// or https:// URL",
        ),
        ({"webhook": "https://"}, "notify.webhook", "must be an http:// or https:// URL"),
        ({"command": "a\x00b"}, "notify.command", "must not hold a NUL character"),
        ({"bogus": 1}, "notify.bogus", "unknown key"),
    ],
)
def test_profile_mistakes_in_notify_are_named(notify, key, says):
    with pytest.raises(ProfileError) as caught:
        profile_from_dict({"notify": notify})
    problems = caught.value.problems
    assert [p.key for p in problems] == [key]
    assert says in problems[0].message


def test_mpt_validate_names_a_bad_notify_key_and_exits_2(tmp_path):
    profile = write_toml(tmp_path / "p.toml", {"notify": {"webhook": "slack", "on": ["finishd"]}})

    r = mpt("validate", profile, cwd=tmp_path)

    assert r.returncode == 2
    assert "notify.webhook: must be an http:// or https:// URL" in r.stderr + r.stdout
    assert "did you mean 'finished'?" in r.stderr + r.stdout


def test_a_resumed_run_notifies_its_own_ending_once(tmp_path):
    told = tmp_path / "told.jsonl"
    notify = {"command": f"cat >> {shlex.quote(str(told))}"}
    first = train(profile_dict(tmp_path / "runs", {"notify": notify}), write=True)

    again = train(resume=first.run_dir, overrides=["run.epochs=2"], trust_code=True)

    messages = [json.loads(line) for line in told.read_text().splitlines()]
    assert [m["run_dir"] for m in messages] == [str(first.run_dir), str(again.run_dir)]
    assert messages[1]["epoch"] == 2


def test_a_webhook_that_never_answers_is_given_up_after_its_timeout(tmp_path, monkeypatch):
    import engine.notify

    monkeypatch.setattr(engine.notify, "WEBHOOK_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # takes the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        run = start(profile_dict(tmp_path / "runs", {"notify": {"webhook": url}}))
        done = finish(run)
        ended = time.time()

    assert done.reason == "completed"
    assert notify_warnings(done.events) == [
        f"[notify] the webhook at {url.removesuffix('/hook')} did not answer within 0.5 s"
    ]
    assert ended - done.of("run_finished")[0].time < 0.5 + 2  # the timeout, and no more


def test_ctrl_c_on_mpt_run_notifies_interrupted_before_the_process_exits(tmp_path):
    slow = {"run": {"epochs": 200}, "notify": {"command": recording_command(tmp_path)}}
    profile = write_toml(tmp_path / "p.toml", profile_dict(tmp_path / "runs", slow))
    output = tmp_path / "output.txt"
    with open(output, "wb") as out:
        proc = spawn_mpt("run", profile, cwd=tmp_path, stdout=out, stderr=out)
    try:
        training = lambda: list((tmp_path / "runs").glob("tiny/*/checkpoints"))  # noqa: E731
        wait_for(lambda: proc.poll() is not None or training(), 120, "training")
        assert proc.poll() is None, "mpt run ended before it was interrupted"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()

    message, env = recorded(tmp_path)  # written before mpt exited
    assert message["kind"] == "run_finished" and message["reason"] == "interrupted"
    assert env["MPT_EVENT"] == "interrupted" and env["MPT_REASON"] == "interrupted"
    # The resume it suggests names the profile: the checkpoint alone would not run the command.
    assert f"resume with: mpt run {profile} --resume " in output.read_text()


def test_a_resume_from_a_checkpoint_alone_does_not_run_its_command_without_consent(tmp_path):
    told = tmp_path / "told.jsonl"
    notify = {"command": f"cat >> {shlex.quote(str(told))}"}
    first = train(profile_dict(tmp_path / "runs", {"notify": notify}), write=True)
    told.unlink()

    again = train(resume=first.run_dir, overrides=["run.epochs=2"])

    assert not told.exists()  # a run folder can come from anyone: its command is code
    assert any("--trust-code" in m for m in notify_warnings(again.events))
    trusted = train(resume=first.run_dir, overrides=["run.epochs=2"], trust_code=True)
    assert json.loads(told.read_text())["run_dir"] == str(trusted.run_dir)
