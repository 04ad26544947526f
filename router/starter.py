"""``dicom-router init``: a commented starter configuration and the ready-made pipelines."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled_pipelines_dir() -> Path:
    """``pipelines/`` as shipped: inside the wheel, or beside the package in a checkout."""
    inside = Path(str(resources.files("router"))) / "_bundled" / "pipelines"
    if inside.is_dir():
        return inside
    return Path(__file__).resolve().parent.parent / "pipelines"


def write_starter(directory: Path) -> list[Path]:
    """Write ``router.toml`` and ``pipelines/*.toml`` into ``directory``; never overwrite."""
    source = bundled_pipelines_dir()
    files = {directory / "router.toml": resources.files("router").joinpath("starter.toml").read_text("utf-8")}
    for pipeline in sorted(source.glob("*.toml")):
        files[directory / "pipelines" / pipeline.name] = pipeline.read_text("utf-8")
    for path in files:
        if path.exists():
            raise FileExistsError(str(path))
    written = []
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written
