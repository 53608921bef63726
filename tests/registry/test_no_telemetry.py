"""MLflow's usage telemetry is off wherever ``registry`` is imported: nothing is sent out, and no background
thread removes an environment variable while a request iterates ``os.environ`` (a KeyError
'_MLFLOW_TELEMETRY_SESSION_ID' failed a pipeline run's MLflow call under load)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECK = """
import os, registry, mlflow
from mlflow.telemetry.client import get_telemetry_client
print(get_telemetry_client() is None, "_MLFLOW_TELEMETRY_SESSION_ID" in os.environ)
"""


def test_importing_registry_turns_mlflow_telemetry_off():
    # a bare environment: no CI or pytest variable, which would switch MLflow's telemetry off by themselves
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "False"], out.stdout
