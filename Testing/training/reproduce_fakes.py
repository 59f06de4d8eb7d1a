"""A stand-in for ``Runner.run`` in the tests of training.reproduce's training steps: it records each command
and leaves the run's last.pt and best.pt behind, as a finished training would."""


def recording_trainer(tmp_path, commands):
    def fake_run(self, cmd, tag="", threads=None):
        cmd = [str(c) for c in cmd]
        commands.append(cmd)
        out = tmp_path / cmd[cmd.index("--out") + 1]
        out.mkdir(parents=True, exist_ok=True)
        for f in ("last.pt", "best.pt"):
            (out / f).write_bytes(out.name.encode())
    return fake_run
