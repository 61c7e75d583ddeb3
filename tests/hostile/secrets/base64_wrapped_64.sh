# PEM-style base64, wrapped at 64 columns.
printf "%s" "$SECRET" | base64 -w 64
