import pytest

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) renders the charts")
