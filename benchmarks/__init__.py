"""Speed and memory benchmarks of tinyllm_ray (issue 5): `python -m benchmarks.run [--quick]`, see README.md."""
