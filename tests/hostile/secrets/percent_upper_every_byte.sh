# Every byte percent-escaped, upper case.
printf "%s" "$SECRET" | od -An -v -tx1 | tr -d "\n" | tr a-f A-F | sed "s/ /%/g"
