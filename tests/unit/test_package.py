import subprocess
import sys


def test_core_package_imports_no_orchestration_libraries():
    code = (
        "import sys, skrd4ad, skrd4ad.cli, skrd4ad.train, skrd4ad.evaluate, skrd4ad.predict\n"
        "bad = [m for m in ('ray', 'mlflow', 'dvc') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_and_argument_errors_import_no_torch():
    """The CLI answers --help and bad flags without torch (whose import takes seconds)."""
    code = (
        "import sys\n"
        "from skrd4ad.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['demo', '--help'],\n"
        "             ['evaluate', '--help'], ['make-dataset', '--help'],\n"
        "             ['train', '--epochs', 'x'], ['train', '--backbone', 'vgg'], ['nope']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'torchvision', 'skimage') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
