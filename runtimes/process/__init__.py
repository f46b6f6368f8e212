"""The confined worker for ``isolation="process"``: zygote, child loop, confinement, framing.

Host side: `sandbox.process.ProcessDriver`. Nothing here imports `sandbox`.
"""
