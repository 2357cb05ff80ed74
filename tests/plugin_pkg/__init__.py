"""Tiny third-party algorithm plugins used by tests/test_registry_config.py (not a test module).

- `plugin_pkg.my_algo:MyAlgo`: an unregistered Algorithm subclass loaded with the "module:Class" syntax.
- `bench_plugin_demo/`: source of a plugin distribution that registers "demo_algo" through the
  `dppo_bench.algorithms` entry-point group; the test copies it into tmp_path beside a fake
  `bench_plugin_demo-0.1.dist-info` folder (it is never imported from here).
"""
