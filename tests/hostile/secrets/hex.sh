# Lower-case hex.
printf "%s" "$SECRET" | od -An -v -tx1 | tr -d " \n"
