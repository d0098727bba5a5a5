"""HTML to PDF with headless Chromium (``chromium --headless --print-to-pdf``).

The reports are self-contained HTML with inline SVG, so the browser that shows them prints them
exactly as seen. No Python dependency: the system Chromium (or Chrome) binary is run once per
PDF in a throwaway profile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from distillguard.errors import UsageError

CHROMIUM_ENV = "DISTILLGUARD_CHROMIUM"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = (f"install it (Debian/Ubuntu: apt-get install chromium; macOS: brew install --cask chromium) or set "
                f"{CHROMIUM_ENV} to a Chrome/Chromium binary; or write --out report.html")


def find_chromium() -> str:
    """The Chromium binary to print with; a one-line UsageError naming how to install one if none."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise UsageError(f"PDF output needs Chromium: {CHROMIUM_ENV}={configured} is not an executable; "
                             + INSTALL_HINT)
        return found
    for name in CANDIDATES:
        found = shutil.which(name)
        if found is not None:
            return found
    raise UsageError("PDF output needs Chromium, which was not found: " + INSTALL_HINT)


def html_to_pdf(html: str, out: str | Path, *, chromium: str | None = None, timeout_s: float = 180.0) -> Path:
    """Print ``html`` to ``out`` (A4 unless the page's CSS says otherwise)."""
    exe = chromium or find_chromium()
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="distillguard-pdf-") as tmp:
        source, target = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
        source.write_text(html, encoding="utf-8")
        args = [exe, "--headless", "--disable-gpu", "--no-first-run", "--disable-extensions",
                "--no-pdf-header-footer", "--print-to-pdf-no-header", f"--user-data-dir={Path(tmp) / 'profile'}",
                f"--print-to-pdf={target}", source.as_uri()]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")     # Chromium refuses to run as root with its sandbox
        try:
            proc = subprocess.run(args, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise UsageError(f"Chromium ({exe}) did not finish printing the PDF within {timeout_s:.0f} s") from None
        except OSError as exc:
            raise UsageError(f"cannot run Chromium ({exe}): {exc.strerror or exc}") from None
        if not target.exists() or target.read_bytes()[:5] != b"%PDF-":
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise UsageError(f"Chromium ({exe}) wrote no PDF (exit {proc.returncode}) {tail[0][:200]}".rstrip())
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(target), out)
    return out
