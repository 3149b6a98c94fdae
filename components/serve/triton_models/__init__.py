"""Sources of the repository's Python-backend models, copied into their version folders.

They run inside Triton's Python stub in the serving image, which has numpy, Pillow, onnxruntime, ftfy
and regex but neither kubeclip nor torch: these files import nothing else (tests check it).
"""

from pathlib import Path

SOURCES = Path(__file__).parent
