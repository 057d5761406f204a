"""Finds the tritonserver binary of nvidia-pytriton and prepares what it needs to run here.

The ``nvidia-pytriton`` wheel ships a real ``tritonserver`` (2.51) with the python backend, its
shared libraries in ``nvidia_pytriton.libs`` and one python-backend stub per Python version. Three
things make it serve our models from *this* environment, however the user installed us:

* **the stub**: the python backend runs ``<backend dir>/python/triton_python_backend_stub``; we
  build a backend folder in the run dir that links the backend library and the stub built for
  the running interpreter's Python version (pytriton copies the same files for the same reason);
* **libpython**: the stub links ``libpython3.X.so``; the running interpreter's own ``LIBDIR``
  goes first on ``LD_LIBRARY_PATH`` so the stub embeds the same Python as ours;
* **packages**: the stub starts Python *isolated* (``PYTHONPATH`` is ignored) and finds its
  prefix by looking up ``python3`` on ``PATH``. We put first on ``PATH`` a tiny virtual
  environment in the run dir whose ``bin/python3`` is our interpreter and whose site-packages
  holds a ``.pth`` listing every entry of our ``sys.path`` (venv, ``--user``, conda,
  ``PYTHONPATH``, editable installs), so the models import the numpy and onnxruntime we have.

That interpreter runs every ``.pth`` it finds, so these files are only ever written into a new,
private folder (``launch-*``, see :mod:`serve._run_dir`): every folder here is created
exclusively and every file with ``O_EXCL``; anything already there is an error, never reused.

Example:
    >>> installation = find_tritonserver()            # doctest: +SKIP
    >>> env = prepare_launch(installation, new_launch_dir(run_dir))   # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from detstack.errors import ServeError
from detstack.tokens import TOKEN_ENV

__all__ = ["TritonInstallation", "find_tritonserver", "prepare_launch"]

_INSTALL_HINT = "install it with: pip install nvidia-pytriton"
_STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstallation:
    """Where the parts of the pytriton tritonserver are."""

    binary: Path
    python_backend: Path
    stubs: Path
    libs: Path

    def stub_for(self, version: str) -> Path:
        """The python-backend stub built for Python ``version`` (``"3.11"``)."""
        stub = self.stubs / version / _STUB
        if not stub.is_file():
            available = sorted(p.name for p in self.stubs.iterdir() if (p / _STUB).is_file())
            raise ServeError(
                f"nvidia-pytriton has no python-backend stub for Python {version} (it has "
                f"{', '.join(available) or 'none'}); run detstack with one of those Python versions"
            )
        return stub


def find_tritonserver() -> TritonInstallation:
    """Locate the tritonserver binary installed by nvidia-pytriton, without importing pytriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServeError(
            "the tritonserver binary comes with nvidia-pytriton, which is not installed; "
            + _INSTALL_HINT
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServeError(
            f"tritonserver binary not found at {binary}; {_INSTALL_HINT} "
            "(a full wheel, not a source tree)"
        )
    if not os.access(binary, os.X_OK):
        raise ServeError(
            f"tritonserver binary at {binary} is not executable; reinstall: "
            "pip install --force-reinstall nvidia-pytriton"
        )
    python_backend = root / "backends" / "python"
    if not (python_backend / "libtriton_python.so").is_file():
        raise ServeError(f"the python backend is missing from {python_backend}; {_INSTALL_HINT}")
    # Wheels keep the bundled libraries beside the package; editable installs inside it.
    libs = package.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        libs = root / "external_libs"
    return TritonInstallation(binary, python_backend, root / "python_backend_stubs", libs)


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _write_new(path: Path, text: str) -> None:
    """Create ``path`` (0600) with ``text``; an existing file is an error, never reused."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)


def _build_backends(installation: TritonInstallation, launch_dir: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = installation.stub_for(version)
    backends = launch_dir / "backends"
    python_dir = backends / "python"
    backends.mkdir(mode=0o700)
    python_dir.mkdir(mode=0o700)
    for item in installation.python_backend.iterdir():
        if item.name != "__pycache__":
            _link(item, python_dir / item.name)
    _link(stub, python_dir / _STUB)
    return backends


def _path_entries() -> list[str]:
    """Our import path minus the standard library (the stub brings its own)."""
    stdlib = {
        os.path.realpath(p)
        for key in ("stdlib", "platstdlib")
        if (p := sysconfig.get_paths().get(key))
    }
    entries = []
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        real = os.path.realpath(entry)
        if real in stdlib or os.path.basename(real) == "lib-dynload" or real in entries:
            continue
        entries.append(real)
    # The served models import detstack's image policy. An editable install finds it through a
    # meta-path hook that a .pth line installs, and the stub does not run our .pth files: name
    # the folder that holds the package itself.
    import detstack

    home = os.path.realpath(os.path.dirname(os.path.dirname(detstack.__file__)))
    if home not in entries:
        entries.append(home)
    return entries


def _build_python_env(launch_dir: Path) -> Path:
    """A minimal venv whose ``python3`` is ours and whose .pth mirrors our ``sys.path``."""
    env_dir = launch_dir / "python-env"
    bin_dir = env_dir / "bin"
    env_dir.mkdir(mode=0o700)
    bin_dir.mkdir(mode=0o700)
    base_executable = Path(
        os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    )
    _link(base_executable, bin_dir / "python3")
    _write_new(
        env_dir / "pyvenv.cfg",
        f"home = {base_executable.parent}\ninclude-system-site-packages = false\n"
        f"version = {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}\n",
    )
    site_packages = env_dir / "lib"
    for part in (f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages"):
        site_packages.mkdir(mode=0o700)
        site_packages = site_packages / part
    site_packages.mkdir(mode=0o700)
    _write_new(site_packages / "detstack-environment.pth", "\n".join(_path_entries()) + "\n")
    return bin_dir


def _libpython_dir() -> str | None:
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and os.path.exists(os.path.join(libdir, soname)):
        return libdir
    return None


def prepare_launch(
    installation: TritonInstallation, launch_dir: Path, environ: dict[str, str] | None = None
) -> tuple[Path, dict[str, str]]:
    """Build the backend folder and Python environment in ``launch_dir``; return them with the env.

    ``launch_dir`` must be new and private (:func:`serve._run_dir.new_launch_dir`).

    Returns:
        ``(backend_directory, environment)`` for the tritonserver process.

    Raises:
        ServeError: something is already in ``launch_dir`` (it is never reused).
    """
    try:
        backends = _build_backends(installation, launch_dir)
        python_bin = _build_python_env(launch_dir)
    except FileExistsError as error:
        raise ServeError(
            f"{error.filename} already exists: launch files are only written into a new, "
            "private folder, never over what is there"
        ) from None
    env = dict(os.environ if environ is None else environ)
    # The token travels on the command line Triton needs; it has no business in the environment.
    env.pop(TOKEN_ENV, None)
    library_path = [p for p in (_libpython_dir(), str(installation.libs)) if p]
    if env.get("LD_LIBRARY_PATH"):
        library_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
    env["PATH"] = os.pathsep.join([str(python_bin), env.get("PATH", os.defpath)])
    return backends, env
