"""Where the repository is, for tests that run scripts or read shipped files: ``REPO_ROOT`` (a str).

    from tests.support.paths import REPO_ROOT
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "soak.py"), ...])
"""

from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[2])
