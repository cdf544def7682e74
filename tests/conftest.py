import sys
from pathlib import Path

# kit.py (the fixture builders) sits beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
