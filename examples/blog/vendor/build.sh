#!/bin/sh
# build.sh SRC OUT: turns a small Markdown subset into HTML pages.
# Headings (# ...), paragraphs, and [text](page.md) links.
set -e
src=$1
out=$2
mkdir -p "$out"
for file in "$src"/*.md; do
  name=$(basename "$file" .md)
  {
    echo "<!doctype html><html><body>"
    sed -e 's/^# \(.*\)$/<h1>\1<\/h1>/' \
        -e 's/\[\([^]]*\)\](\([^)]*\)\.md)/<a href="\2.html">\1<\/a>/g' \
        -e '/^<h1>/!s/^\(..*\)$/<p>\1<\/p>/' "$file"
    echo "</body></html>"
  } > "$out/$name.html"
  echo "built $name.html"
done
