"""The reporting API on :8890 and the two map pages it serves."""
