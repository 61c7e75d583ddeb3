# The value as it is.
printf "%s" "$SECRET"
