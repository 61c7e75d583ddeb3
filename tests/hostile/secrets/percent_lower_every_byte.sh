# Every byte percent-escaped, lower case (%5a%71...).
printf "%s" "$SECRET" | od -An -v -tx1 | tr -d "\n" | sed "s/ /%/g"
