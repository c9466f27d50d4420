from glob import glob

from setuptools import find_namespace_packages, setup

package_name = 'vla_prune_ros'

setup(
    name=package_name,
    version='0.1.0',
    # Namespace discovery also lists assets/ (policies, URDF: data, no __init__.py) as packages, so
    # setuptools ships them as package data instead of warning that they would be ignored.
    packages=find_namespace_packages(include=[package_name, package_name + '.*']),
    package_data={package_name: ['assets/*', 'assets/**/*']},
    include_package_data=True,
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml')),
    ],
    install_requires=['setuptools'],
    extras_require={'test': ['pytest']},   # colcon test runs pytest when this names it
    zip_safe=False,
    maintainer='vla_prune_ros maintainers',
    maintainer_email='maintainers@vla-prune-ros.dev',
    description='Token-pruned OpenVLA-OFT policies as a ROS 2 action server.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'vla_prune_node = vla_prune_ros.node.server:main',
            'vla_prune_sim = vla_prune_ros.sim.sim_node:main',
            'vla-prune = vla_prune_ros.cli:main',
        ],
    },
)
