"""Launch a recipe on a Cloud TPU VM slice (e.g. v3-32: 4 hosts, 32 devices), with gcloud.

Levanter's own launcher (`levanter.infra.launch`) builds and pushes a Docker image to Artifact Registry; this
one needs only `gcloud` and the repository: it creates the slice, copies this checkout's committed files to every host,
installs it with TPU jax, and starts `amt train` on all hosts at once (Levanter initializes
`jax.distributed` on TPU pods by itself). The cache and checkpoints live on GCS; the wandb key is read from
the launching shell's environment and passed on, never written down. With `--watch`, a preempted or lost
slice is recreated and the same command restarted: training resumes from the last checkpoint on GCS (the
recipes checkpoint every 30 minutes to a fixed `base_path`).

    amt tpu --name amt-small --zone europe-west4-a --bucket gs://my-bucket --recipe recipes/amt-small.yaml
    amt tpu ... --dry-run        # print the gcloud commands instead of running them
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

JAX_TPU = "jax[tpu]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"  # the jax installed, + libtpu


@dataclass(frozen=True)
class TpuLaunch:
    name: str
    zone: str
    bucket: str  # gs://... holding the caches and checkpoints
    recipe: str = "recipes/amt-small.yaml"
    accelerator: str = "v3-32"
    version: str = "tpu-ubuntu2204-base"
    cache: str = "lakh-a30"  # under the bucket
    spot: bool = True
    extra_args: tuple[str, ...] = ()

    @property
    def run_id(self) -> str:
        return self.name

    def gcloud_tpu(self, *args: str) -> list[str]:
        return ["gcloud", "compute", "tpus", "tpu-vm", *args, f"--zone={self.zone}"]

    def create(self) -> list[str]:
        return self.gcloud_tpu("create", self.name, f"--accelerator-type={self.accelerator}",
                               f"--version={self.version}", *(["--spot"] if self.spot else []))

    def delete(self) -> list[str]:
        return self.gcloud_tpu("delete", self.name, "--quiet")

    def state(self) -> list[str]:
        return self.gcloud_tpu("describe", self.name, "--format=value(state)")

    def archive_code(self) -> list[str]:
        return ["git", "archive", "--format=tar.gz", "-o", "/tmp/amt-code.tar.gz", "HEAD"]  # committed files only

    def copy_code(self) -> list[str]:
        return self.gcloud_tpu("scp", "--worker=all", "/tmp/amt-code.tar.gz", f"{self.name}:~/amt-code.tar.gz")

    def on_all_hosts(self, command: str) -> list[str]:
        return self.gcloud_tpu("ssh", self.name, "--worker=all", f"--command={command}")

    def install(self) -> list[str]:
        return self.on_all_hosts(
            "mkdir -p ~/amt && tar -xzf ~/amt-code.tar.gz -C ~/amt && cd ~/amt && python3 -m venv .venv "
            "&& .venv/bin/pip install -q -e . "
            f'&& .venv/bin/pip install -q "{JAX_TPU}" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html'
        )

    def train_command(self) -> str:
        args = [
            ".venv/bin/amt", "train", "--config_path", self.recipe,
            "--data.cache_dir", f"{self.bucket}/{self.cache}",
            "--trainer.checkpointer.base_path", f"{self.bucket}/checkpoints/{self.run_id}",
            "--trainer.id", self.run_id, *self.extra_args,  # (wandb's run id is the trainer's: a restart resumes it)
        ]
        # WANDB_API_KEY is expanded by the launching shell into the remote command's environment
        return ("cd ~/amt && WANDB_API_KEY=${WANDB_API_KEY} nohup " + shlex.join(args)
                + " > train.log 2>&1 < /dev/null &")

    def start(self) -> list[str]:
        return self.on_all_hosts(self.train_command())

    def commands(self) -> list[list[str]]:
        return [self.create(), self.archive_code(), self.copy_code(), self.install(), self.start()]


def printable(command: list[str]) -> str:
    """The command as a shell line; the remote command in double quotes, so that the launching shell
    expands ${WANDB_API_KEY}, and nothing else: its other $, quotes, backticks and backslashes are escaped (the
    install command's "jax[tpu]==$(...)" is the remote shell's; unescaped, the launching shell ran it and the quotes
    were lost)."""
    return " ".join(_key_expanded(part) if part.startswith("--command=") else shlex.quote(part) for part in command)


def _key_expanded(part: str) -> str:
    escaped = re.sub(r'([\\"$`])', r"\\\1", part)
    return '"' + escaped.replace("\\${WANDB_API_KEY}", "${WANDB_API_KEY}") + '"'


def _run(command: list[str], dry_run: bool) -> int:
    print(printable(command))
    if dry_run:
        return 0
    expanded = [part.replace("${WANDB_API_KEY}", os.environ.get("WANDB_API_KEY", "")) for part in command]
    return subprocess.run(expanded).returncode


def launch(job: TpuLaunch, dry_run: bool = False, watch: bool = False, poll_seconds: int = 300) -> int:
    if not job.bucket.startswith("gs://"):
        raise ValueError(f"bucket: caches and checkpoints must be on GCS (gs://...), got {job.bucket!r}")
    if not dry_run and not os.environ.get("WANDB_API_KEY"):
        print("warning: WANDB_API_KEY is not set: the run will log to wandb offline", file=sys.stderr)
    for command in job.commands():
        if _run(command, dry_run):
            return 1
    if dry_run:
        print("# with --watch: every 5 minutes, `" + printable(job.state()) + "`; unless READY, delete, "
              "recreate, reinstall and restart (training resumes from the last GCS checkpoint)")
        return 0
    while watch:
        time.sleep(poll_seconds)
        state = subprocess.run(job.state(), capture_output=True, text=True).stdout.strip()
        if state != "READY":
            print(f"slice {job.name} is {state or 'gone'}: recreating it and resuming", file=sys.stderr)
            _run(job.delete(), False)
            for command in job.commands():
                _run(command, False)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="TPU VM name (also the run id)")
    parser.add_argument("--zone", required=True, help="e.g. europe-west4-a (v3) or us-central2-b (v4)")
    parser.add_argument("--bucket", required=True, help="gs://BUCKET holding <cache>/ and checkpoints/")
    parser.add_argument("--recipe", default="recipes/amt-small.yaml", help="the training recipe (a local YAML file)")
    parser.add_argument("--accelerator", default="v3-32", help="TPU type and size (gcloud --accelerator-type)")
    parser.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM software version")
    parser.add_argument("--cache", default="lakh-a30", help="cache folder under the bucket (amt preprocess --out)")
    parser.add_argument("--on-demand", dest="spot", action="store_false", help="not a spot (preemptible) slice")
    parser.add_argument("--dry-run", action="store_true", help="print the gcloud commands only")
    parser.add_argument("--watch", action="store_true", help="recreate and resume after preemption")


def main(args: argparse.Namespace, extra: list[str]) -> int:
    job = TpuLaunch(args.name, args.zone, args.bucket.rstrip("/"), args.recipe, args.accelerator, args.version,
                    args.cache, args.spot, tuple(extra))
    return launch(job, dry_run=args.dry_run, watch=args.watch)
