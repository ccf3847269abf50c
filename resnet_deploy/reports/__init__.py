"""What a build reports, and the pages made from it; knows report data, never how it was measured.

- report.py: the report's data (`Report`, `EngineResult`, `Latency`), the engine naming and the build's return code
- schema.py: a report.json / layers.json read back and checked (`read_report`, `read_layers`)
- environment.py: the host and versions a report was measured with
- markdown.py, html.py: report.md and report.html (`to_markdown`, `render_html`); write.py writes all three
- compare.py: two reports side by side (`resnet-deploy compare`)
- formats.py: the number formats all pages share
"""
