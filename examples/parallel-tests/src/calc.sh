#!/bin/sh
# calc: whole-number arithmetic for the command line.
add() { echo $(( $1 + $2 )); }
mul() { echo $(( $1 * $2 )); }
