//! An address block such as `10.0.0.0/24` or `fd00::/64`, for `[peers] allow`.

use std::{fmt, net::IpAddr, str::FromStr};

/// An IP network: the address with its host bits cleared, and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block holding `addr` alone (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self {
            network: addr,
            prefix,
        }
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` is in the block. An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, as
    /// a dual-stack socket reports IPv4 callers) is taken as the IPv4 address.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = mask::<u32>(self.prefix, 32);
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = mask::<u128>(self.prefix, 128);
                u128::from(net) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

/// `prefix` leading one bits out of `bits`.
fn mask<T>(prefix: u8, bits: u8) -> T
where
    T: From<u8> + std::ops::Not<Output = T> + std::ops::Shl<u32, Output = T>,
{
    if prefix == 0 {
        return T::from(0);
    }
    !T::from(0) << u32::from(bits - prefix)
}

/// Why a text is not a CIDR.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an address block like \"10.0.0.0/24\" or \"fd00::/64\": {why}")]
pub struct CidrError {
    text: String,
    why: &'static str,
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDR/LEN`, or a bare address for that one host. Host bits must be zero, so that a
    /// typo such as `10.0.0.1/8` for `10.0.0.1/32` is caught rather than widened.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |why| CidrError {
            text: text.to_owned(),
            why,
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| error("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| error("the prefix length is out of range"))?,
        };
        let cidr = Self {
            network: addr,
            prefix,
        };
        let host_bits_set = match addr {
            IpAddr::V4(a) => u32::from(a) & !mask::<u32>(prefix, 32) != 0,
            IpAddr::V6(a) => u128::from(a) & !mask::<u128>(prefix, 128) != 0,
        };
        if host_bits_set {
            return Err(error("bits are set after the prefix length"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_hold_their_addresses_only() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.255.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        assert!(!net.contains(ip("fd00::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("192.0.2.1")));
        let v6: Cidr = "fd00:1::/32".parse().unwrap();
        assert!(v6.contains(ip("fd00:1:ffff::1")));
        assert!(!v6.contains(ip("fd00:2::1")));
        let host = Cidr::host(ip("192.0.2.7"));
        assert_eq!(host.to_string(), "192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        assert_eq!("192.0.2.7".parse::<Cidr>().unwrap(), host);
    }

    #[test]
    fn bad_blocks_say_why() {
        for (text, why) in [
            ("10.0.0.0/33", "out of range"),
            ("10.0.0.0/x", "out of range"),
            ("10.0.0.1/8", "bits are set"),
            ("ten/8", "not an IP address"),
            ("", "not an IP address"),
        ] {
            let error = text.parse::<Cidr>().unwrap_err().to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
