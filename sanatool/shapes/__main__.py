"""Regenerate the shipped prompt suites: ``python -m sanatool.shapes`` (a maintainer's step after a grammar change)."""

from sanatool.shapes.suites import write_shipped_suites

if __name__ == "__main__":
    for path in write_shipped_suites():
        print(f"wrote {path}")  # noqa: T201 - a maintainer's script, not the library
