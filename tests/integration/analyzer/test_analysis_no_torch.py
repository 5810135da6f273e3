"""Without torch (a separate interpreter where `import torch` fails) the analyzer's detector falls back to the
threshold rules and says so in one log line."""
import subprocess
import sys


def test_without_torch_falls_back_to_rules_with_one_log_line():
    code = (
        "import sys, logging; sys.modules['torch'] = None\n"  # makes `import torch` raise ImportError
        "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')\n"
        "from x0tta6bl4.analysis import load_detector\n"
        "d = load_detector(); print('DETECTOR', type(d).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "DETECTOR RuleBasedDetector" in out.stdout
    lines = [line for line in out.stderr.splitlines() if line.startswith("WARNING")]
    assert len(lines) == 1 and "torch" in lines[0] and "threshold rules" in lines[0]
