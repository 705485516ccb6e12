"""Maps the top-level folders hw/, sw/ and sim/ onto the ``vitaccel.hw``, ``vitaccel.sw``
and ``vitaccel.sim`` packages (``vitaccel`` itself is a namespace package), so that the
repository keeps its flat layout and nothing installs as a bare ``hw``/``sw``/``sim``."""

from setuptools import find_packages, setup

package_dir = {}
for top in ("hw", "sw", "sim"):
    for sub in [top] + [f"{top}.{name}" for name in find_packages(top)]:
        package_dir[f"vitaccel.{sub}"] = sub.replace(".", "/")

setup(
    packages=sorted(package_dir),
    package_dir=package_dir,
    package_data={name: ["*.json", "*.pt", "*.npz", "*.tcl", "*.xdc", "*.md"] for name in package_dir},
    include_package_data=True,
)
