# The value inside a JSON string, "/" left alone (Python's json.dumps).
printf '%s' "$SECRET" | sed 's/\\/\\\\/g; s/"/\\"/g'
