import subprocess
import sys


def test_core_package_imports_no_orchestration_libraries():
    code = (
        "import sys, skrd4ad, skrd4ad.cli, skrd4ad.train, skrd4ad.evaluate, skrd4ad.predict\n"
        "bad = [m for m in ('ray', 'mlflow', 'dvc') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
