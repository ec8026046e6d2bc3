"""The presentation layer: what driftd prints for people and programs (documents, text, colour, diffs).

Pipeline position: after record; fed by the pipeline's typed results, never by log lines.
"""
