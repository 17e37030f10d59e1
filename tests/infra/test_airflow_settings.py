"""The import paths infra/airflow.sh gives Airflow's settings resolve to what Airflow expects."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

SCRIPT = (Path(__file__).resolve().parents[2] / "infra" / "airflow.sh").read_text()
IMPORT_SETTINGS = dict(re.findall(r"export (AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS\w*)=(\S+)", SCRIPT))


def test_the_script_sets_both_engines_connect_args():
    assert set(IMPORT_SETTINGS) == {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC",
    }


@pytest.mark.parametrize("name", sorted(IMPORT_SETTINGS))
def test_each_connect_args_path_imports_to_a_dict_with_a_lock_timeout(name):
    module, attribute = IMPORT_SETTINGS[name].rsplit(".", 1)
    value = getattr(importlib.import_module(module), attribute)
    assert isinstance(value, dict) and value["timeout"] >= 30


def test_the_two_engines_do_not_share_one_dict():
    module = importlib.import_module("infra.airflow_sqlite")
    assert module.SYNC is not module.ASYNC
