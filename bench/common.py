"""What the benches share: the real dataset's place beside the checkout, and the --csv option."""

import argparse
from pathlib import Path

SHARED_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "symptom2disease.csv"


def parser_with_csv(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--csv", default=str(SHARED_CSV), help="symptom2disease.csv (default: ../shared/data)")
    return parser
