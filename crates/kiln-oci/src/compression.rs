//! Layer compression, detected from the bytes themselves: media types lie
//! (docker save writes `.tar` names for anything, and some registries label
//! zstd layers as gzip), magic numbers do not.

use std::io::{self, Cursor, Read};

use crate::Error;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const BZIP2_MAGIC: &[u8] = b"BZh";
/// Enough to tell every format above apart (bzip2 needs its block magic).
const SNIFF_LEN: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The OCI layer media type for a tar with this compression.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Identifies the compression from the first bytes of a stream.
    pub fn sniff(head: &[u8]) -> Result<Compression, Error> {
        if head.starts_with(GZIP_MAGIC) {
            Ok(Compression::Gzip)
        } else if head.starts_with(ZSTD_MAGIC) {
            Ok(Compression::Zstd)
        } else if head.starts_with(XZ_MAGIC) {
            Err(Error::UnsupportedCompression("xz"))
        } else if head.starts_with(BZIP2_MAGIC)
            && head.len() >= SNIFF_LEN
            && head[3].is_ascii_digit()
            && head[4..10] == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59]
        {
            Err(Error::UnsupportedCompression("bzip2"))
        } else {
            Ok(Compression::None)
        }
    }
}

/// Reads the first bytes of `reader` without losing them.
pub(crate) fn peek<'a, R: Read + 'a>(mut reader: R) -> io::Result<(Vec<u8>, impl Read + 'a)> {
    let mut head = vec![0u8; SNIFF_LEN];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(filled);
    Ok((head.clone(), Cursor::new(head).chain(reader)))
}

/// Wraps `reader` in the decompressor its magic bytes call for.
pub(crate) fn decompress<'a, R: Read + 'a>(
    reader: R,
) -> Result<(Compression, Box<dyn Read + 'a>), Error> {
    let (head, reader) = peek(reader).map_err(|source| Error::CorruptLayer {
        context: "reading the first bytes".into(),
        source,
    })?;
    let compression = Compression::sniff(&head)?;
    let reader: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(reader),
        // Multi-member gzip is valid and some tools write it (pigz, for one).
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(
            reader,
        ))),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(reader).map_err(|source| {
                Error::CorruptLayer {
                    context: "starting zstd decoder".into(),
                    source,
                }
            })?)
        }
    };
    Ok((compression, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_magic() {
        assert_eq!(
            Compression::sniff(&[0x1f, 0x8b, 8]).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::sniff(b"etc/passwd\0\0").unwrap(),
            Compression::None
        );
        assert_eq!(Compression::sniff(b"").unwrap(), Compression::None);
        assert!(matches!(
            Compression::sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]),
            Err(Error::UnsupportedCompression("xz"))
        ));
        assert!(matches!(
            Compression::sniff(b"BZh91AY&SY"),
            Err(Error::UnsupportedCompression("bzip2"))
        ));
        // A tar whose first file happens to be named "BZh..." is still a tar.
        assert_eq!(
            Compression::sniff(b"BZh-notes\0").unwrap(),
            Compression::None
        );
    }

    #[test]
    fn peek_keeps_every_byte() {
        // A reader that returns one byte per call, like a slow pipe.
        struct Trickle(Vec<u8>, usize);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.1 >= self.0.len() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[self.1];
                self.1 += 1;
                Ok(1)
            }
        }
        let data: Vec<u8> = (0..100u8).collect();
        let (head, mut rest) = peek(Trickle(data.clone(), 0)).unwrap();
        assert_eq!(head, &data[..SNIFF_LEN]);
        let mut all = Vec::new();
        rest.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
    }
}
