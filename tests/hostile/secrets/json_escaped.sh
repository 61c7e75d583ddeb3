# The value inside a JSON string: backslash and quote escaped, then "/" as "\/".
printf '%s' "$SECRET" | sed 's/\\/\\\\/g; s/"/\\"/g; s#/#\\/#g'
