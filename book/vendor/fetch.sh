#!/usr/bin/env bash
# Vendors the three browser assets the built book needs, so that it reads OFFLINE.
#
# By default a Jupyter Book page loads MathJax, RequireJS and the ipywidgets HTML manager from
# CDNs. This script takes them from the npm registry (with `npm pack`, which checks each tarball
# against the registry's integrity hash), keeps only the files the pages load, and writes them
# here, in book/vendor/, with their licences. _config.yml copies this folder into the HTML root
# (sphinx `html_extra_path`; NOT `_static`: Jupyter Book injects every script found under
# `_static` into every page) and points `mathjax_path` and `nb_ipywidgets_js` at it.
#
# Pinned versions (change them here, rerun, then rebuild the book):
#   mathjax@3.2.2                        es5/tex-chtml-full.js (TeX input with every TeX extension
#                                        built in, so nothing is autoloaded) + CHTML woff-v2 fonts
#   requirejs@2.3.8                      require.js (the html manager is an AMD module)
#   @jupyter-widgets/html-manager@1.0.15 dist/embed-amd.js (matches ipywidgets 8.1.x: widget
#                                        protocol 2, @jupyter-widgets/controls 5) + the Font
#                                        Awesome 5 woff2 fonts it references relative to itself
#   @fortawesome/fontawesome-free@5.15.4 LICENSE.txt only (the fonts bundled in embed-amd.js)
#
# Not fetched, written here: shims/mathjax2-hub.js (lets the widget manager typeset its labels on
# a MathJax 3 page; see the file).
#
# Usage:  bash book/vendor/fetch.sh          # fetch, replace the vendored files, write SHA256SUMS
#         bash book/vendor/fetch.sh --check  # verify the committed files against SHA256SUMS
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if [[ "${1:-}" == "--check" ]]; then
    sha256sum --quiet -c SHA256SUMS && echo "book/vendor: all files match SHA256SUMS"
    exit
fi

MATHJAX=mathjax@3.2.2
REQUIREJS=requirejs@2.3.8
HTMLMANAGER=@jupyter-widgets/html-manager@1.0.15
FONTAWESOME=@fortawesome/fontawesome-free@5.15.4

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$MATHJAX" "$REQUIREJS" "$HTMLMANAGER" "$FONTAWESOME" >/dev/null)
for tgz in "$tmp"/*.tgz; do
    d="$tmp/$(basename "$tgz" .tgz)"
    mkdir -p "$d" && tar xzf "$tgz" -C "$d"
done
mj="$tmp/mathjax-3.2.2/package"
rq="$tmp/requirejs-2.3.8/package"
hm="$tmp/jupyter-widgets-html-manager-1.0.15/package"
fa="$tmp/fortawesome-fontawesome-free-5.15.4/package"

rm -rf mathjax requirejs html-manager LICENSES
mkdir -p mathjax/output/chtml/fonts requirejs html-manager LICENSES

# MathJax: one combined component; it finds its fonts at [mathjax]/output/chtml/fonts/woff-v2,
# relative to the script's own URL.
cp "$mj/es5/tex-chtml-full.js" mathjax/
cp -r "$mj/es5/output/chtml/fonts/woff-v2" mathjax/output/chtml/fonts/
cp "$mj/LICENSE" LICENSES/mathjax-Apache-2.0.txt

cp "$rq/require.js" requirejs/

# The html manager's webpack bundle resolves its font URLs against its own location. Browsers take
# the woff2 entry of each @font-face, so the eot/ttf/woff/svg variants are left out.
cp "$hm/dist/embed-amd.js" html-manager/
for f in $(grep -o '[0-9a-f]\{20\}\.woff2' "$hm/dist/embed-amd.js" | sort -u); do
    cp "$hm/dist/$f" html-manager/
done
cp "$hm/dist/embed.js.LICENSE.txt" LICENSES/html-manager-bundled-third-party.txt
cp "$fa/LICENSE.txt" LICENSES/fontawesome-free-5.15.4.txt

# Neither requirejs nor @jupyter-widgets/html-manager ships a licence file in its npm tarball;
# their package.json say MIT and BSD-3-Clause. The texts below are those projects' licences.
cat > LICENSES/requirejs-MIT.txt <<'TXT'
RequireJS 2.3.8 (https://github.com/requirejs/requirejs), npm package "requirejs", license "MIT".

Copyright jQuery Foundation and other contributors, https://jquery.org/

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
TXT
cat > LICENSES/ipywidgets-html-manager-BSD-3-Clause.txt <<'TXT'
@jupyter-widgets/html-manager 1.0.15 (part of ipywidgets, https://github.com/jupyter-widgets/ipywidgets),
npm package license "BSD-3-Clause".

Copyright (c) 2015 Project Jupyter Contributors
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

3. Neither the name of the copyright holder nor the names of its
   contributors may be used to endorse or promote products derived from
   this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
TXT

find mathjax requirejs html-manager LICENSES -type f | LC_ALL=C sort | xargs sha256sum > SHA256SUMS
echo "book/vendor: $(wc -l < SHA256SUMS) files, $(du -sh --exclude=fetch.sh . | cut -f1) in all"
