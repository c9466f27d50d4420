"""Where the package's files are: bundled policies, the robot URDF, the params files in ``config/``."""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent                     # the repository, when running from source
ASSETS_DIR = PACKAGE_DIR / 'assets'
URDF_PATH = ASSETS_DIR / 'arm.urdf'                  # the simulated arm
DEFAULT_POLICY = ASSETS_DIR / 'policies' / 'default'
LIGHTVLA_POLICY = ASSETS_DIR / 'policies' / 'lightvla'
CONFIG_DIR = SOURCE_ROOT / 'config'                  # the source tree's config/
SIM_ROBOT_CONFIG = CONFIG_DIR / 'sim_robot.yaml'     # the simulated arm as the node sees it
PACKAGE_URL = 'package://vla_prune_ros/'


def resolve_package_url(path: str) -> str:
    """``package://vla_prune_ros/<path>`` -> the file of this package; other paths unchanged."""
    return str(PACKAGE_DIR / path[len(PACKAGE_URL):]) if path.startswith(PACKAGE_URL) else path
