# base64 of the base64, unwrapped (the tj-actions leak).
printf "%s" "$SECRET" | base64 -w 0 | base64 -w 0
