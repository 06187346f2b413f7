"""The built-in dataset: a seeded, synthetic e-commerce world (English or Chinese product text).

The world is small but structured like a real shop, so that reading product text pays off:

- Catalog: ~60 leaf categories under 8 top categories ("Electronics > Cameras > Mirrorless Cameras"),
  brands that each sell in a few related categories at a price positioning (budget / mid / premium),
  attributes (color, size, material) and templated, varied titles and descriptions that mention the
  category, the brand, the attributes and the price level.
- Users: 1-3 preferred top categories, favourite brands, a brand loyalty and a price level.
- Sequences: leaf categories are linked into "next purchase" chains (camera -> memory card -> tripod,
  laptop -> laptop bag -> mouse, ...). Each next purchase is mostly a complement of (or in the same
  category as) a recent purchase, at the user's price level, often from a brand already bought or a
  favourite one; trending bestsellers and random browsing are the minority.
- Popularity is long-tailed (Zipf within each category), so many specific items are rare: item-to-item
  co-occurrence is sparse, while categories, brands and price levels generalise.

Everything is drawn from one `numpy.random.Generator(seed)`: the same arguments give identical tables,
and the English and Chinese worlds of one seed share ids, prices, attributes and events (only the text
differs). Raw user ids ("user_00042") are pseudonymized before the interactions are built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from towerrec.data.privacy import pseudonymize
from towerrec.data.schema import CATEGORY_SEP, Catalog, DataError, Dataset, Interactions

__all__ = ["generate", "complements", "LANGUAGES"]

LANGUAGES = ("en", "zh")
_REDRAWS = 4  # tries to replace a repeat purchase of a non-consumable item
TIERS = ("budget", "mid", "premium")

# ---------------------------------------------------------------------------------------------------
# Taxonomy
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Leaf:
    key: str
    path: str  # English category path, "Top > Mid > Leaf"
    path_zh: str
    nouns: tuple[str, ...]  # product nouns (synonyms), natural case
    nouns_zh: tuple[str, ...]
    price: float  # typical mid-tier price
    use: str  # "for ..." phrase
    use_zh: str
    next: tuple[str, ...]  # complementary next-purchase leaves, strongest first
    sizes: tuple[str, ...] = ()
    sizes_zh: tuple[str, ...] | None = None  # None: same as `sizes`
    colors: str = ""  # palette name, "" for none
    materials: tuple[str, ...] = ()
    consumable: bool = False  # re-bought: more same-category repeats


_L = _Leaf
_SHIRT = ("S", "M", "L", "XL")
_SML = ("S", "M", "L")
_SML_ZH = ("小号", "中号", "大号")
_SHOE = ("EU 38", "EU 40", "EU 42", "EU 44", "EU 46")
_SHOE_ZH = ("38码", "40码", "42码", "44码", "46码")
_LAPTOP = ('13.3"', '14"', '15.6"', '16"')

_TOPS_ZH = {
    "Electronics": "数码电子",
    "Home & Kitchen": "家居厨房",
    "Sports & Outdoors": "运动户外",
    "Clothing & Shoes": "服饰鞋靴",
    "Beauty & Personal Care": "美妆个护",
    "Pet Supplies": "宠物用品",
    "Office Products": "办公用品",
    "Toys & Games": "玩具游戏",
}
# relative traffic of each top category
_TOP_WEIGHT = {
    "Electronics": 1.4,
    "Home & Kitchen": 1.1,
    "Sports & Outdoors": 1.0,
    "Clothing & Shoes": 1.2,
    "Beauty & Personal Care": 1.0,
    "Pet Supplies": 0.8,
    "Office Products": 0.7,
    "Toys & Games": 0.8,
}

# fmt: off
_LEAVES: tuple[_Leaf, ...] = (
    # Electronics
    _L("mirrorless", "Electronics > Cameras > Mirrorless Cameras", "数码电子 > 相机 > 微单相机",
       ("mirrorless camera", "camera body", "compact system camera"), ("微单相机", "无反相机", "微单"), 850,
       "for travel and street photography", "适合旅行与街拍", ("memory_cards", "camera_bags", "tripods"),
       ("APS-C", "Full Frame"), ("APS-C画幅", "全画幅"), "neutral"),
    _L("action_cams", "Electronics > Cameras > Action Cameras", "数码电子 > 相机 > 运动相机",
       ("action camera", "4K action cam", "sports camera"), ("运动相机", "4K运动摄像机", "防抖运动相机"), 220,
       "for cycling, diving and outdoor adventures", "适合骑行、潜水和户外探险",
       ("memory_cards", "bike_helmets", "batteries"), colors="neutral"),
    _L("memory_cards", "Electronics > Camera Accessories > Memory Cards", "数码电子 > 摄影配件 > 存储卡",
       ("memory card", "SD card", "microSD card"), ("存储卡", "SD卡", "TF内存卡"), 25,
       "for fast 4K recording and burst shooting", "支持4K高速录制与连拍", ("tripods", "camera_bags"),
       ("64 GB", "128 GB", "256 GB", "512 GB")),
    _L("tripods", "Electronics > Camera Accessories > Tripods", "数码电子 > 摄影配件 > 三脚架",
       ("tripod", "travel tripod", "camera tripod"), ("三脚架", "便携三脚架", "相机支架"), 70,
       "for steady long exposures and video", "适合长曝光与稳定拍摄", ("camera_bags", "memory_cards"),
       ("150 cm", "170 cm"), materials=("aluminium", "carbon fiber")),
    _L("camera_bags", "Electronics > Camera Accessories > Camera Bags", "数码电子 > 摄影配件 > 相机包",
       ("camera bag", "camera backpack", "sling camera bag"), ("相机包", "摄影双肩包", "单肩相机包"), 55,
       "to carry a body, lenses and accessories", "可收纳机身、镜头与配件", ("tripods", "memory_cards"),
       colors="neutral", materials=("nylon", "canvas", "leather")),
    _L("laptops", "Electronics > Computers > Laptops", "数码电子 > 电脑 > 笔记本电脑",
       ("laptop", "notebook computer", "ultrabook"), ("笔记本电脑", "轻薄本", "手提电脑"), 950,
       "for work, study and everyday computing", "适合办公、学习与日常使用",
       ("laptop_bags", "mice", "keyboards", "monitors"), _LAPTOP, colors="neutral"),
    _L("laptop_bags", "Electronics > Computer Accessories > Laptop Bags", "数码电子 > 电脑配件 > 电脑包",
       ("laptop bag", "laptop sleeve", "laptop backpack"), ("电脑包", "笔记本内胆包", "电脑双肩包"), 40,
       "to protect your laptop on the go", "出行时保护您的笔记本电脑", ("mice", "chargers"),
       _LAPTOP, colors="neutral", materials=("nylon", "polyester", "leather")),
    _L("mice", "Electronics > Computer Accessories > Mice", "数码电子 > 电脑配件 > 鼠标",
       ("wireless mouse", "mouse", "ergonomic mouse"), ("无线鼠标", "鼠标", "人体工学鼠标"), 28,
       "for precise everyday navigation", "日常操作精准顺滑", ("keyboards", "monitors"), colors="neutral"),
    _L("keyboards", "Electronics > Computer Accessories > Keyboards", "数码电子 > 电脑配件 > 键盘",
       ("keyboard", "mechanical keyboard", "wireless keyboard"), ("键盘", "机械键盘", "无线键盘"), 60,
       "for comfortable all-day typing", "长时间打字依然舒适", ("mice", "monitors"), colors="neutral"),
    _L("monitors", "Electronics > Computer Accessories > Monitors", "数码电子 > 电脑配件 > 显示器",
       ("monitor", "IPS monitor", "4K display"), ("显示器", "IPS显示器", "4K显示屏"), 240,
       "for a larger, sharper workspace", "带来更大更清晰的工作空间", ("keyboards", "desk_lamps"),
       ('24"', '27"', '32"')),
    _L("smartphones", "Electronics > Phones > Smartphones", "数码电子 > 手机 > 智能手机",
       ("smartphone", "5G phone", "mobile phone"), ("智能手机", "5G手机", "手机"), 550,
       "with a sharp camera and all-day battery", "拍照清晰，续航持久",
       ("phone_cases", "chargers", "headphones"), ("128 GB", "256 GB", "512 GB"), colors="bright"),
    _L("phone_cases", "Electronics > Phone Accessories > Phone Cases", "数码电子 > 手机配件 > 手机壳",
       ("phone case", "protective case", "slim case"), ("手机壳", "防摔保护壳", "超薄手机壳"), 18,
       "that guards against drops and scratches", "防摔防刮", ("chargers", "headphones"),
       colors="bright", materials=("silicone", "TPU", "leather")),
    _L("chargers", "Electronics > Phone Accessories > Chargers", "数码电子 > 手机配件 > 充电器",
       ("fast charger", "USB-C charger", "wall charger"), ("快充充电器", "USB-C充电头", "充电器"), 24,
       "for quick top-ups at home or on the road", "居家出行快速补电", ("headphones", "batteries"),
       ("20 W", "45 W", "65 W", "100 W"), colors="neutral"),
    _L("headphones", "Electronics > Audio > Headphones", "数码电子 > 影音 > 耳机",
       ("headphones", "wireless earbuds", "noise-cancelling headphones"), ("耳机", "无线耳机", "降噪耳机"), 110,
       "for immersive music and calls", "沉浸式听音与通话", ("speakers", "chargers"), colors="bright"),
    _L("speakers", "Electronics > Audio > Bluetooth Speakers", "数码电子 > 影音 > 蓝牙音箱",
       ("Bluetooth speaker", "portable speaker", "smart speaker"), ("蓝牙音箱", "便携音箱", "智能音箱"), 75,
       "with rich sound for home and outdoors", "室内户外都有饱满音质", ("headphones", "batteries"),
       colors="bright"),
    _L("batteries", "Electronics > Power > Rechargeable Batteries", "数码电子 > 电源 > 充电电池",
       ("rechargeable batteries", "battery pack", "NiMH batteries"), ("充电电池", "电池套装", "镍氢电池"), 14,
       "for toys, remotes and flashlights", "适用于玩具、遥控器与手电筒", ("headlamps", "bike_lights", "rc_cars"),
       ("AA x4", "AAA x4", "AA x8"), ("5号4节", "7号4节", "5号8节"), consumable=True),
    # Home & Kitchen
    _L("frying_pans", "Home & Kitchen > Cookware > Frying Pans", "家居厨房 > 锅具 > 平底锅",
       ("frying pan", "skillet", "non-stick pan"), ("平底锅", "煎锅", "不粘锅"), 38,
       "for searing, frying and everyday cooking", "煎炒烹炸样样在行",
       ("saucepans", "knife_sets", "cutting_boards"), ("24 cm", "28 cm", "32 cm"),
       materials=("stainless steel", "cast iron", "non-stick aluminium")),
    _L("saucepans", "Home & Kitchen > Cookware > Saucepans", "家居厨房 > 锅具 > 汤锅",
       ("saucepan", "stockpot", "sauce pot"), ("汤锅", "炖锅", "奶锅"), 42,
       "for soups, sauces and pasta", "煲汤、煮面、做酱汁", ("frying_pans", "cutting_boards"),
       ("1.5 L", "2 L", "3 L", "5 L"), materials=("stainless steel", "enamelled cast iron")),
    _L("coffee_makers", "Home & Kitchen > Kitchen Appliances > Coffee Makers", "家居厨房 > 厨房电器 > 咖啡机",
       ("coffee maker", "espresso machine", "drip coffee machine"), ("咖啡机", "意式咖啡机", "滴滤咖啡机"), 140,
       "for café-style coffee at home", "在家享受咖啡馆品质", ("coffee_beans", "mugs"), colors="neutral"),
    _L("blenders", "Home & Kitchen > Kitchen Appliances > Blenders", "家居厨房 > 厨房电器 > 搅拌机",
       ("blender", "smoothie blender", "high-speed blender"), ("搅拌机", "破壁机", "料理机"), 75,
       "for smoothies, soups and sauces", "轻松制作奶昔、浓汤与酱料", ("knife_sets", "cutting_boards", "mugs"),
       ("1 L", "1.5 L", "2 L"), colors="neutral"),
    _L("coffee_beans", "Home & Kitchen > Coffee & Tea > Coffee Beans", "家居厨房 > 咖啡茶饮 > 咖啡豆",
       ("coffee beans", "whole bean coffee", "espresso roast"), ("咖啡豆", "烘焙咖啡豆", "意式拼配咖啡豆"), 14,
       "roasted for a rich, balanced cup", "烘焙出浓郁均衡的口感", ("mugs", "coffee_makers"),
       ("250 g", "500 g", "1 kg"), consumable=True),
    _L("mugs", "Home & Kitchen > Coffee & Tea > Mugs", "家居厨房 > 咖啡茶饮 > 马克杯",
       ("coffee mug", "travel mug", "tumbler"), ("马克杯", "随行杯", "保温杯"), 14,
       "for your daily coffee or tea", "适合日常咖啡与茶饮", ("coffee_beans",), ("350 ml", "450 ml"),
       colors="bright", materials=("ceramic", "glass", "stainless steel")),
    _L("knife_sets", "Home & Kitchen > Kitchen Tools > Knife Sets", "家居厨房 > 厨房工具 > 刀具套装",
       ("knife set", "chef's knife set", "kitchen knife block"), ("刀具套装", "厨师刀套装", "菜刀组合"), 65,
       "for precise slicing and dicing", "切片切丁精准利落", ("cutting_boards", "frying_pans"),
       materials=("stainless steel", "Damascus steel", "ceramic")),
    _L("cutting_boards", "Home & Kitchen > Kitchen Tools > Cutting Boards", "家居厨房 > 厨房工具 > 砧板",
       ("cutting board", "chopping board", "butcher block"), ("砧板", "切菜板", "实木菜板"), 22,
       "for safe, hygienic food prep", "备菜安全卫生", ("knife_sets", "frying_pans"), _SML, _SML_ZH,
       materials=("bamboo", "walnut wood", "plastic")),
    # Sports & Outdoors
    _L("tents", "Sports & Outdoors > Camping > Tents", "运动户外 > 露营 > 帐篷",
       ("tent", "camping tent", "backpacking tent"), ("帐篷", "露营帐篷", "徒步帐篷"), 140,
       "for weekend camping and backpacking trips", "适合周末露营与徒步旅行",
       ("sleeping_bags", "headlamps", "hiking_boots"), ("1-person", "2-person", "4-person"),
       ("单人", "双人", "四人"), "outdoor"),
    _L("sleeping_bags", "Sports & Outdoors > Camping > Sleeping Bags", "运动户外 > 露营 > 睡袋",
       ("sleeping bag", "mummy sleeping bag", "down sleeping bag"), ("睡袋", "木乃伊睡袋", "羽绒睡袋"), 65,
       "rated for cold nights outdoors", "寒夜露营依然温暖", ("headlamps", "tents"),
       ("0 °C", "-5 °C", "-10 °C"), colors="outdoor"),
    _L("headlamps", "Sports & Outdoors > Camping > Headlamps", "运动户外 > 露营 > 头灯",
       ("headlamp", "LED headlamp", "running headlamp"), ("头灯", "LED头灯", "跑步头灯"), 22,
       "for hands-free light on the trail", "夜间户外解放双手", ("hiking_boots", "batteries"),
       ("200 lm", "400 lm", "1000 lm")),
    _L("yoga_mats", "Sports & Outdoors > Fitness > Yoga Mats", "运动户外 > 健身 > 瑜伽垫",
       ("yoga mat", "exercise mat", "non-slip yoga mat"), ("瑜伽垫", "健身垫", "防滑瑜伽垫"), 28,
       "for yoga, pilates and home workouts", "适合瑜伽、普拉提和居家健身",
       ("resistance_bands", "dumbbells", "t_shirts"), ("4 mm", "6 mm", "8 mm"), colors="bright",
       materials=("TPE", "natural rubber", "PVC")),
    _L("dumbbells", "Sports & Outdoors > Fitness > Dumbbells", "运动户外 > 健身 > 哑铃",
       ("dumbbell set", "adjustable dumbbells", "hex dumbbells"), ("哑铃套装", "可调节哑铃", "六角哑铃"), 45,
       "for strength training at home", "居家力量训练", ("resistance_bands", "yoga_mats"),
       ("2 x 5 kg", "2 x 10 kg", "2 x 20 kg"), materials=("cast iron", "rubber-coated steel", "neoprene")),
    _L("resistance_bands", "Sports & Outdoors > Fitness > Resistance Bands", "运动户外 > 健身 > 弹力带",
       ("resistance bands", "exercise bands", "loop bands"), ("弹力带", "阻力带", "健身拉力圈"), 14,
       "for mobility and strength work anywhere", "随时随地拉伸与力量训练", ("yoga_mats",),
       ("light", "medium", "heavy"), ("轻阻力", "中阻力", "重阻力"), "bright", ("latex", "fabric")),
    _L("bikes", "Sports & Outdoors > Cycling > Bikes", "运动户外 > 骑行 > 自行车",
       ("bike", "road bike", "mountain bike"), ("自行车", "公路车", "山地车"), 650,
       "for commuting and weekend rides", "通勤与周末骑行皆宜", ("bike_helmets", "bike_lights"),
       _SML, colors="bright", materials=("aluminium", "carbon fiber", "steel")),
    _L("bike_helmets", "Sports & Outdoors > Cycling > Bike Helmets", "运动户外 > 骑行 > 骑行头盔",
       ("bike helmet", "cycling helmet", "MIPS helmet"), ("骑行头盔", "自行车头盔", "MIPS头盔"), 55,
       "for safe rides in town and on trails", "城市与山路骑行安全防护", ("bike_lights", "action_cams"),
       _SML, colors="bright"),
    _L("bike_lights", "Sports & Outdoors > Cycling > Bike Lights", "运动户外 > 骑行 > 车灯",
       ("bike light set", "rear bike light", "USB bike light"), ("自行车灯", "骑行尾灯", "USB充电车灯"), 22,
       "to see and be seen at night", "夜骑看得清也被看见", ("bike_helmets", "rain_jackets"),
       ("400 lm", "800 lm")),
    # Clothing & Shoes
    _L("running_shoes", "Clothing & Shoes > Shoes > Running Shoes", "服饰鞋靴 > 鞋 > 跑鞋",
       ("running shoes", "road running shoes", "trainers"), ("跑鞋", "公路跑鞋", "运动鞋"), 95,
       "with cushioned, responsive soles", "缓震回弹，脚感轻盈", ("sports_socks", "running_shorts", "t_shirts"),
       _SHOE, _SHOE_ZH, "apparel"),
    _L("hiking_boots", "Clothing & Shoes > Shoes > Hiking Boots", "服饰鞋靴 > 鞋 > 登山靴",
       ("hiking boots", "waterproof hiking boots", "trekking boots"), ("登山靴", "防水徒步鞋", "户外登山鞋"), 125,
       "with grippy soles for rough trails", "大底抓地力强，适合崎岖山路", ("sports_socks", "rain_jackets", "tents"),
       _SHOE, _SHOE_ZH, "outdoor", ("leather", "suede", "synthetic mesh")),
    _L("running_shorts", "Clothing & Shoes > Activewear > Running Shorts", "服饰鞋靴 > 运动服饰 > 跑步短裤",
       ("running shorts", "training shorts", "athletic shorts"), ("跑步短裤", "训练短裤", "运动短裤"), 28,
       "with quick-dry fabric", "速干面料，透气清爽", ("t_shirts", "sports_socks"), _SHIRT, colors="apparel",
       materials=("polyester", "nylon")),
    _L("sports_socks", "Clothing & Shoes > Activewear > Sports Socks", "服饰鞋靴 > 运动服饰 > 运动袜",
       ("sports socks", "running socks", "crew socks"), ("运动袜", "跑步袜", "中筒袜"), 11,
       "with cushioning and moisture control", "缓震吸汗", ("running_shoes", "running_shorts"), _SML,
       colors="apparel", materials=("cotton", "merino wool", "polyester"), consumable=True),
    _L("rain_jackets", "Clothing & Shoes > Outerwear > Rain Jackets", "服饰鞋靴 > 外套 > 防水夹克",
       ("rain jacket", "waterproof jacket", "shell jacket"), ("防水夹克", "冲锋衣", "防雨外套"), 105,
       "that keeps you dry in wind and rain", "防风防雨，保持干爽", ("hiking_boots", "t_shirts"), _SHIRT,
       colors="outdoor"),
    _L("t_shirts", "Clothing & Shoes > Tops > T-Shirts", "服饰鞋靴 > 上衣 > T恤",
       ("T-shirt", "crew neck tee", "performance tee"), ("T恤", "圆领T恤", "运动T恤"), 18,
       "for everyday comfort", "日常穿着舒适", ("running_shorts", "rain_jackets"), _SHIRT, colors="apparel",
       materials=("cotton", "polyester", "merino wool")),
    # Beauty & Personal Care
    _L("cleansers", "Beauty & Personal Care > Skincare > Facial Cleansers", "美妆个护 > 护肤 > 洁面",
       ("facial cleanser", "foaming cleanser", "gentle face wash"), ("洁面乳", "氨基酸洗面奶", "温和洁面"), 14,
       "that cleans without drying", "清洁不紧绷", ("moisturizers", "sunscreen"),
       ("100 ml", "150 ml", "200 ml"), consumable=True),
    _L("moisturizers", "Beauty & Personal Care > Skincare > Moisturizers", "美妆个护 > 护肤 > 面霜",
       ("moisturizer", "face cream", "hydrating gel cream"), ("面霜", "保湿霜", "补水凝霜"), 28,
       "for 24-hour hydration", "24小时持续保湿", ("sunscreen", "cleansers"), ("50 ml", "100 ml"),
       consumable=True),
    _L("sunscreen", "Beauty & Personal Care > Skincare > Sunscreen", "美妆个护 > 护肤 > 防晒",
       ("sunscreen", "face sunscreen", "sun lotion"), ("防晒霜", "面部防晒乳", "防晒乳"), 17,
       "with broad-spectrum UV protection", "广谱防晒，有效阻隔紫外线", ("cleansers", "moisturizers"),
       ("SPF 30", "SPF 50", "SPF 50+"), consumable=True),
    _L("shampoo", "Beauty & Personal Care > Hair Care > Shampoo", "美妆个护 > 洗护发 > 洗发水",
       ("shampoo", "repair shampoo", "anti-dandruff shampoo"), ("洗发水", "修护洗发露", "去屑洗发水"), 11,
       "for clean, healthy-looking hair", "洁净健康秀发", ("conditioner", "hair_dryers"),
       ("250 ml", "400 ml", "750 ml"), consumable=True),
    _L("conditioner", "Beauty & Personal Care > Hair Care > Conditioner", "美妆个护 > 洗护发 > 护发素",
       ("conditioner", "repair conditioner", "hair mask"), ("护发素", "修护护发素", "发膜"), 12,
       "that detangles and softens", "顺滑柔软不打结", ("shampoo", "hair_dryers"),
       ("250 ml", "400 ml", "750 ml"), consumable=True),
    _L("hair_dryers", "Beauty & Personal Care > Hair Care > Hair Dryers", "美妆个护 > 洗护发 > 吹风机",
       ("hair dryer", "ionic hair dryer", "travel hair dryer"), ("吹风机", "负离子吹风机", "便携吹风机"), 65,
       "for fast, frizz-free drying", "速干不毛躁", ("shampoo", "conditioner"), ("1200 W", "1800 W", "2200 W"),
       colors="bright"),
    # Pet Supplies
    _L("dog_food", "Pet Supplies > Dogs > Dog Food", "宠物用品 > 狗狗 > 狗粮",
       ("dry dog food", "grain-free dog food", "puppy food"), ("狗粮", "无谷狗粮", "幼犬粮"), 38,
       "with real meat and balanced nutrition", "真肉配方，营养均衡", ("dog_leashes", "dog_beds"),
       ("2 kg", "6 kg", "12 kg"), consumable=True),
    _L("dog_leashes", "Pet Supplies > Dogs > Leashes & Harnesses", "宠物用品 > 狗狗 > 牵引绳",
       ("dog leash", "retractable leash", "dog harness"), ("狗狗牵引绳", "伸缩牵引绳", "胸背带"), 18,
       "for safe, comfortable walks", "安全舒适遛狗", ("dog_beds", "dog_food"), _SML, _SML_ZH, "bright",
       ("nylon", "leather")),
    _L("dog_beds", "Pet Supplies > Dogs > Dog Beds", "宠物用品 > 狗狗 > 狗窝",
       ("dog bed", "orthopedic dog bed", "pet cushion"), ("狗窝", "记忆棉狗垫", "宠物垫"), 45,
       "for a cosy, supportive rest", "舒适支撑好睡眠", ("dog_food",), _SML, _SML_ZH, "neutral",
       ("memory foam", "fleece", "canvas")),
    _L("cat_food", "Pet Supplies > Cats > Cat Food", "宠物用品 > 猫咪 > 猫粮",
       ("cat food", "grain-free cat food", "kitten food"), ("猫粮", "无谷猫粮", "幼猫粮"), 28,
       "with high-protein recipes", "高蛋白配方", ("cat_litter", "cat_toys"), ("1.5 kg", "4 kg", "10 kg"),
       consumable=True),
    _L("cat_litter", "Pet Supplies > Cats > Cat Litter", "宠物用品 > 猫咪 > 猫砂",
       ("cat litter", "clumping litter", "low-dust litter"), ("猫砂", "结团猫砂", "低尘猫砂"), 18,
       "with strong odour control", "强效除臭", ("cat_food", "cat_toys"), ("5 L", "10 L", "20 L"),
       materials=("bentonite clay", "tofu", "silica gel"), consumable=True),
    _L("cat_toys", "Pet Supplies > Cats > Cat Toys", "宠物用品 > 猫咪 > 猫玩具",
       ("cat toy", "teaser wand", "catnip toy"), ("猫玩具", "逗猫棒", "猫薄荷玩具"), 9,
       "to keep indoor cats active", "让室内猫咪保持活力", ("cat_food", "cat_litter"), colors="bright"),
    # Office Products
    _L("office_chairs", "Office Products > Office Furniture > Office Chairs", "办公用品 > 办公家具 > 办公椅",
       ("office chair", "ergonomic chair", "desk chair"), ("办公椅", "人体工学椅", "电脑椅"), 190,
       "with adjustable lumbar support", "腰托可调，久坐不累", ("desks", "desk_lamps"), colors="neutral",
       materials=("mesh", "leather", "fabric")),
    _L("desks", "Office Products > Office Furniture > Desks", "办公用品 > 办公家具 > 办公桌",
       ("desk", "standing desk", "computer desk"), ("办公桌", "升降桌", "电脑桌"), 230,
       "for a tidy, productive workspace", "打造整洁高效的工作区", ("office_chairs", "desk_lamps", "monitors"),
       ("120 cm", "140 cm", "160 cm"), materials=("oak veneer", "walnut wood", "steel")),
    _L("desk_lamps", "Office Products > Lighting > Desk Lamps", "办公用品 > 照明 > 台灯",
       ("desk lamp", "LED desk lamp", "reading lamp"), ("台灯", "LED台灯", "护眼阅读灯"), 35,
       "with flicker-free, dimmable light", "无频闪，亮度可调", ("notebooks", "pens"), colors="neutral"),
    _L("notebooks", "Office Products > Stationery > Notebooks", "办公用品 > 文具 > 记事本",
       ("notebook", "hardcover journal", "dotted notebook"), ("记事本", "硬面手账", "点阵本"), 9,
       "for notes, plans and sketches", "记录笔记、计划与灵感", ("pens",), ("A5", "A4"), colors="bright",
       consumable=True),
    _L("pens", "Office Products > Stationery > Pens", "办公用品 > 文具 > 笔",
       ("gel pens", "ballpoint pens", "rollerball pens"), ("中性笔", "圆珠笔", "走珠笔"), 8,
       "for smooth, smudge-free writing", "书写顺滑不洇墨", ("notebooks",), ("0.5 mm", "0.7 mm"),
       colors="bright", consumable=True),
    # Toys & Games
    _L("building_sets", "Toys & Games > Building Toys > Building Sets", "玩具游戏 > 拼搭玩具 > 积木套装",
       ("building set", "brick set", "construction kit"), ("积木套装", "拼装积木", "益智拼搭套装"), 45,
       "for creative building, ages 8+", "8岁以上创意拼搭", ("board_games", "puzzles"),
       ("300 pcs", "800 pcs", "1500 pcs"), ("300颗粒", "800颗粒", "1500颗粒")),
    _L("board_games", "Toys & Games > Games > Board Games", "玩具游戏 > 桌面游戏 > 桌游",
       ("board game", "strategy board game", "family board game"), ("桌游", "策略桌游", "家庭桌游"), 32,
       "for game nights with family and friends", "适合家庭与朋友聚会", ("puzzles", "building_sets"),
       ("2-4 players", "2-6 players"), ("2-4人", "2-6人")),
    _L("puzzles", "Toys & Games > Games > Jigsaw Puzzles", "玩具游戏 > 桌面游戏 > 拼图",
       ("jigsaw puzzle", "landscape puzzle", "art puzzle"), ("拼图", "风景拼图", "益智拼图"), 16,
       "for relaxing evenings", "适合放松休闲", ("board_games",), ("500 pcs", "1000 pcs", "2000 pcs"),
       ("500片", "1000片", "2000片")),
    _L("rc_cars", "Toys & Games > Remote Control > RC Cars", "玩具游戏 > 遥控玩具 > 遥控车",
       ("RC car", "remote control car", "off-road RC truck"), ("遥控车", "遥控汽车", "越野遥控车"), 55,
       "with fast, responsive controls", "操控灵敏，速度快", ("batteries", "building_sets"), ("1:16", "1:10"),
       colors="bright"),
)
# fmt: on

_PALETTES = {
    "neutral": ("black", "white", "silver", "gray"),
    "bright": ("black", "white", "blue", "red", "green", "pink", "yellow", "purple"),
    "apparel": ("black", "white", "navy", "gray", "red", "olive", "beige", "blue"),
    "outdoor": ("olive", "orange", "navy", "black", "gray", "green"),
}
_COLORS_ZH = {
    "black": "黑色", "white": "白色", "silver": "银色", "gray": "灰色", "blue": "蓝色", "red": "红色",
    "green": "绿色", "pink": "粉色", "yellow": "黄色", "purple": "紫色", "navy": "藏青色", "olive": "橄榄绿",
    "beige": "米色", "orange": "橙色",
}  # fmt: skip
_MATERIALS_ZH = {
    "aluminium": "铝合金", "carbon fiber": "碳纤维", "nylon": "尼龙", "canvas": "帆布", "leather": "皮革",
    "polyester": "涤纶", "silicone": "硅胶", "TPU": "TPU", "stainless steel": "不锈钢", "cast iron": "铸铁",
    "non-stick aluminium": "不粘涂层铝", "enamelled cast iron": "珐琅铸铁", "ceramic": "陶瓷", "glass": "玻璃",
    "Damascus steel": "大马士革钢", "bamboo": "竹", "walnut wood": "胡桃木", "plastic": "塑料", "TPE": "TPE",
    "natural rubber": "天然橡胶", "PVC": "PVC", "rubber-coated steel": "包胶钢", "neoprene": "氯丁橡胶",
    "latex": "乳胶", "fabric": "布艺", "steel": "钢", "suede": "麂皮", "synthetic mesh": "合成网面",
    "cotton": "纯棉", "merino wool": "美利奴羊毛", "memory foam": "记忆棉", "fleece": "抓绒",
    "bentonite clay": "膨润土", "tofu": "豆腐", "silica gel": "水晶硅胶", "mesh": "网布", "oak veneer": "橡木贴皮",
}  # fmt: skip

# Brand names: a syllable pair, the same pair in both languages (brand i is "Norvik" / "北辰").
_BRAND_HEADS = ("Nor", "Vel", "Ar", "Lum", "Kes", "Tor", "Mar", "Zen", "Sol", "Bri",
                "Cal", "Dra", "Ev", "Fal", "Gra", "Hal", "Ion", "Jun", "Kor", "Lyn")  # fmt: skip
_BRAND_TAILS = ("vik", "ora", "ex", "tek", "ion", "ana", "wood", "line", "ix", "ara",
                "mont", "field", "lux", "ona", "sen")  # fmt: skip
_BRAND_HEADS_ZH = ("北", "星", "云", "凯", "青", "华", "锐", "思", "瑞", "安",
                   "优", "博", "禾", "森", "极", "远", "朗", "智", "悦", "泽")  # fmt: skip
_BRAND_TAILS_ZH = ("辰", "宇", "达", "盛", "源", "途", "尚", "峰", "嘉", "美",
                   "品", "乐", "驰", "然", "格")  # fmt: skip

# Model lines and adjectives that carry the price tier into the text.
_LINES = (
    ("Lite", "Basic", "Go", "Essential"),
    ("Plus", "Classic", "One", "Active"),
    ("Pro", "Elite", "Ultra", "Signature"),
)
_LINES_ZH = (("青春版", "基础版", "轻享版"), ("标准版", "经典款", "升级版"), ("旗舰版", "专业版", "尊享版"))
_ADJS = (("affordable", "budget", "great-value", "no-frills"),
         ("reliable", "versatile", "well-made", "dependable"),
         ("premium", "professional-grade", "luxury", "high-end"))  # fmt: skip
_ADJS_ZH = (("高性价比", "平价实用", "入门级"), ("品质可靠", "百搭耐用", "口碑经典"), ("高端", "专业级", "奢华"))
_TIER_SENTENCES = (
    ("Great value for everyday use.", "An entry-level price without the compromises.",
     "A no-frills choice that gets the job done.", "Budget-friendly and easy to replace."),
    ("A dependable balance of quality and price.", "Solid build quality at a fair price.",
     "Our most popular choice for everyday users.", "Good materials and a sensible price."),
    ("Crafted from premium materials for demanding users.", "Top-of-the-line performance and finish.",
     "Designed for enthusiasts and professionals.", "Our flagship quality, built to last for years."),
)  # fmt: skip
_TIER_SENTENCES_ZH = (
    ("价格亲民，日常够用。", "入门价格，品质不打折。", "简约实用，经济之选。"),
    ("品质与价格兼顾。", "做工扎实，价格公道。", "大众口碑款，日常首选。"),
    ("甄选高端材质，满足专业需求。", "旗舰级性能与做工。", "为发烧友与专业人士打造，经久耐用。"),
)
_MODEL_LETTERS = "AXSZMKRTVE"

# ---------------------------------------------------------------------------------------------------
# Behaviour knobs (tuned so popularity << item co-occurrence << a content-aware model)
# ---------------------------------------------------------------------------------------------------
# At the default size (3000 items, 5000 users, ~45k events), leave-last-out test Recall@10 was about:
# popularity 0.035, item-to-item transitions (last 4 items) 0.13, a category-transition x brand x price
# level x colour/size heuristic 0.18. Re-check these when changing the knobs below.

# next-purchase mode probabilities: chain successor, same leaf, preferred top category, any leaf, bestseller
_MODES = ("chain", "same", "preferred", "random", "trending")
_CHAIN, _SAME, _PREFERRED, _RANDOM, _TRENDING = range(len(_MODES))
_MODE_P = np.array([0.52, 0.12, 0.21, 0.13, 0.02])
_MODE_P_CONSUMABLE = np.array([0.30, 0.40, 0.15, 0.13, 0.02])
_ANCHOR_LAST_P = 0.75  # the next purchase follows the last item, else an earlier one
_TIER_USER_P, _TIER_ANCHOR_P = 0.85, 0.05  # target price tier: the user's, the anchor's, else random
_BRAND_ANCHOR_P = 0.2  # a loyal pick takes the anchor's brand, else a favourite brand
_LOYALTY_BETA = (3.0, 2.0)  # per-user brand loyalty ~ Beta(a, b)
_ZIPF_EXPONENT = 0.6  # within-category popularity
_TIER_PRICE = np.array([0.55, 1.0, 1.9])
_USER_TIER_P = np.array([0.35, 0.45, 0.20])
_NUM_BESTSELLERS = 25
_ITEMS_PER_DEMAND = 1.0  # items per leaf grow with the leaf's demand to this power
_CANDIDATES = 4  # draws per purchase, the best attribute match wins
_COLOR_NAMES = tuple(_COLORS_ZH)
_COLOR_P = np.array([6, 5, 2, 3, 3, 2, 2, 1.5, 1, 1, 2, 1, 1.5, 1], dtype=np.float64)  # black, white, ...
_COLOR_P /= _COLOR_P.sum()
_EPOCH = 1_672_531_200  # 2023-01-01T00:00:00Z
_TIE_P, _SESSION_P = 0.06, 0.35  # same timestamp (one order), same session (minutes), else days later


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------


def complements(language: str = "en") -> dict[str, tuple[str, ...]]:
    """Each leaf category path -> its complementary "next purchase" category paths, strongest first."""
    _check_language(language)
    path = {leaf.key: (leaf.path if language == "en" else leaf.path_zh) for leaf in _LEAVES}
    return {path[leaf.key]: tuple(path[k] for k in leaf.next) for leaf in _LEAVES}


def generate(
    num_items: int = 3000,
    num_users: int = 5000,
    seed: int = 0,
    language: str = "en",
    min_len: int = 4,
    max_len: int = 20,
    user_id_secret: str | None = None,
) -> Dataset:
    """A synthetic e-commerce dataset ("synthetic" or "synthetic-zh"); same arguments, same tables."""
    _check_args(num_items, num_users, language, min_len, max_len)
    rng = np.random.default_rng(seed)
    world = _build_world(rng, num_items)
    users, items, timestamps = _simulate(rng, world, num_users, min_len, max_len)

    items_df = _render_catalog(world, language)
    pseudonyms = np.array(pseudonymize([f"user_{u:05d}" for u in range(num_users)], user_id_secret), dtype=object)
    events = pd.DataFrame(
        {"user_id": pseudonyms[users], "item_id": items_df["item_id"].to_numpy()[items], "timestamp": timestamps}
    )
    events = events.sort_values("timestamp", kind="mergesort").reset_index(drop=True)  # a log, oldest first
    name = "synthetic" if language == "en" else "synthetic-zh"
    return Dataset(name, Catalog(items_df), Interactions(events))


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise DataError(f"synthetic dataset: language must be one of {LANGUAGES}, got {language!r}")


def _check_args(num_items: int, num_users: int, language: str, min_len: int, max_len: int) -> None:
    _check_language(language)
    if num_items < len(_LEAVES):
        raise DataError(
            f"synthetic dataset: num_items must be at least {len(_LEAVES)} (one per category), got {num_items}"
        )
    if num_users < 1:
        raise DataError(f"synthetic dataset: num_users must be at least 1, got {num_users}")
    if min_len < 1 or max_len < min_len:
        raise DataError(f"synthetic dataset: need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")


# ---------------------------------------------------------------------------------------------------
# Weighted sampling within groups, vectorised
# ---------------------------------------------------------------------------------------------------


class _GroupSampler:
    """Draws one member of a query group per query, with probability proportional to its weight.

    Members are laid out sorted by group with keys `group + within-group cumulative share`, so one
    `searchsorted` answers a whole batch of (group, uniform) queries.
    """

    def __init__(self, groups: np.ndarray, members: np.ndarray, weights: np.ndarray, num_groups: int):
        order = np.argsort(groups, kind="stable")
        groups, members, weights = groups[order], members[order], weights[order].astype(np.float64)
        self.sizes = np.bincount(groups, minlength=num_groups)  # (G,)
        totals = np.bincount(groups, weights=weights, minlength=num_groups)  # (G,)
        cum = np.cumsum(weights)
        before = np.concatenate([[0.0], np.cumsum(totals)])[:-1]  # (G,) weight of all earlier groups
        share = (cum - before[groups]) / totals[groups]
        ends = np.cumsum(self.sizes) - 1
        share[ends[self.sizes > 0]] = 1.0  # exact upper bound per group
        self.keys = groups + share
        self.members = members

    def has(self, groups: np.ndarray) -> np.ndarray:
        return self.sizes[groups] > 0

    def sample(self, rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
        """One member per query group; every queried group must be non-empty."""
        u = np.minimum(rng.random(len(groups)), 1.0 - 1e-9)
        return self.members[np.searchsorted(self.keys, groups + u, side="right")]


# ---------------------------------------------------------------------------------------------------
# The world: brands and items (numbers only; text is rendered at the end)
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _World:
    leaf_top: np.ndarray  # (L,) top-category index of each leaf
    leaf_weight: np.ndarray  # (L,) traffic share of each leaf
    leaf_next: list[np.ndarray]  # L arrays of complementary leaf indices
    brand_heads: np.ndarray  # (B,) syllable indices of brand names
    brand_tails: np.ndarray  # (B,)
    brand_strength: np.ndarray  # (B,)
    brand_sells: np.ndarray  # (B, L) bool
    item_leaf: np.ndarray  # (N,)
    item_brand: np.ndarray  # (N,)
    item_tier: np.ndarray  # (N,) 0 budget, 1 mid, 2 premium
    item_price: np.ndarray  # (N,)
    item_pop: np.ndarray  # (N,) relative popularity within its leaf
    item_size: np.ndarray  # (N,) index into the leaf's sizes, -1 for none
    item_color: np.ndarray  # (N,) index into the leaf's palette, -1 for none
    item_material: np.ndarray  # (N,) index into the leaf's materials, -1 for none
    item_model: np.ndarray  # (N, 2) model letter and number
    item_text_draws: np.ndarray  # (N, 8) random ints choosing templates and synonyms (language-independent)


_TOPS = tuple(_TOP_WEIGHT)
_LEAF_INDEX = {leaf.key: i for i, leaf in enumerate(_LEAVES)}


def _successor_weights(n: int) -> np.ndarray:
    """(n,) probabilities of a leaf's complements, strongest first."""
    w = 1.0 / np.sqrt(np.arange(1, n + 1))
    return w / w.sum()


def _sizes_are_measured(leaf: _Leaf) -> bool:
    """Sizes that are quantities (128 GB, 28 cm, 2 L: bigger costs more), not fits (M, EU 42)."""
    return any(ch.isdigit() for ch in "".join(leaf.sizes)) and not leaf.sizes[0].startswith("EU")


def _price(raw: np.ndarray, size: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Shelf prices: +20% per size step where sizes are quantities, ending in .99 (or .49 below 20)."""
    raw = raw * np.where(measured & (size > 0), 1.0 + 0.2 * size, 1.0)
    price = np.where(raw >= 20, np.round(raw) - 0.01, np.round(raw * 2) / 2 - 0.01)
    return np.maximum(price, 0.99)


def _leaf_demand(leaf_weight: np.ndarray, leaf_next: list[np.ndarray]) -> np.ndarray:
    """(L,) long-run share of purchases per leaf under the next-purchase chain (power iteration)."""
    num_leaves = len(leaf_weight)
    consumable = np.array([leaf.consumable for leaf in _LEAVES])
    p = np.where(consumable[:, None], _MODE_P_CONSUMABLE, _MODE_P)  # (L, modes)
    move = np.zeros((num_leaves, num_leaves))  # (L, L) row-stochastic
    for i, succ in enumerate(leaf_next):
        move[i, succ] += p[i, _CHAIN] * _successor_weights(len(succ))
    move[np.arange(num_leaves), np.arange(num_leaves)] += p[:, _SAME]
    move += (1.0 - p[:, _CHAIN] - p[:, _SAME])[:, None] * leaf_weight[None, :]  # elsewhere: about leaf traffic
    demand = leaf_weight.copy()
    for _ in range(50):
        demand = demand @ move
    return demand / demand.sum()


def _build_world(rng: np.random.Generator, num_items: int) -> _World:
    num_leaves = len(_LEAVES)
    leaf_top = np.array([_TOPS.index(leaf.path.split(CATEGORY_SEP)[0]) for leaf in _LEAVES])
    top_weight = np.array([_TOP_WEIGHT[t] for t in _TOPS])
    leaf_weight = top_weight[leaf_top] / np.bincount(leaf_top)[leaf_top] * rng.lognormal(0.0, 0.5, num_leaves)
    leaf_weight /= leaf_weight.sum()
    leaf_next = [np.array([_LEAF_INDEX[k] for k in leaf.next]) for leaf in _LEAVES]

    # brands: a home top category, a few leaves in it, sometimes a complementary leaf elsewhere
    num_brands = int(np.clip(round(num_items / 40), 30, len(_BRAND_HEADS) * len(_BRAND_TAILS)))
    pairs = rng.choice(len(_BRAND_HEADS) * len(_BRAND_TAILS), size=num_brands, replace=False)
    brand_heads, brand_tails = pairs // len(_BRAND_TAILS), pairs % len(_BRAND_TAILS)
    brand_strength = rng.lognormal(0.0, 0.6, num_brands)
    brand_tier = rng.choice(3, size=num_brands, p=[0.35, 0.40, 0.25])
    home_p = top_weight * np.bincount(leaf_top)  # more brands where there are more categories
    brand_home = rng.choice(len(_TOPS), size=num_brands, p=home_p / home_p.sum())
    sells = np.zeros((num_brands, num_leaves), dtype=bool)
    for b in range(num_brands):
        in_home = np.flatnonzero(leaf_top == brand_home[b])
        k = min(len(in_home), int(rng.integers(2, 7)))
        chosen = rng.choice(in_home, size=k, replace=False)
        sells[b, chosen] = True
        if rng.random() < 0.3:
            extra = np.concatenate([leaf_next[c] for c in chosen])
            sells[b, rng.choice(extra)] = True
    for leaf in range(num_leaves):  # every leaf gets two brands, preferably lightly loaded ones from its top
        missing = 2 - int(sells[:, leaf].sum())
        if missing > 0:
            pool = np.flatnonzero(~sells[:, leaf])
            fit = np.where(brand_home[pool] == leaf_top[leaf], 10.0, 1.0) / (1.0 + sells[pool].sum(axis=1)) ** 2
            sells[rng.choice(pool, size=missing, replace=False, p=fit / fit.sum()), leaf] = True

    # items per leaf: at least one each, the rest in proportion to the expected purchases
    share = _leaf_demand(leaf_weight, leaf_next) ** _ITEMS_PER_DEMAND
    share /= share.sum()
    counts = 1 + rng.multinomial(num_items - num_leaves, share)
    item_leaf = np.repeat(np.arange(num_leaves), counts)
    item_brand = np.empty(num_items, dtype=np.int64)
    item_pop = np.empty(num_items)
    for leaf in range(num_leaves):
        at = np.flatnonzero(item_leaf == leaf)
        brands = np.flatnonzero(sells[:, leaf])
        p = brand_strength[brands] / brand_strength[brands].sum()
        item_brand[at] = rng.choice(brands, size=len(at), p=p)
        ranks = rng.permutation(len(at)) + 1
        item_pop[at] = ranks ** (-_ZIPF_EXPONENT) * np.sqrt(brand_strength[item_brand[at]])

    # a brand's items sit mostly at its price positioning
    shift = rng.choice([-1, 0, 1], size=num_items, p=[0.15, 0.7, 0.15])
    item_tier = np.clip(brand_tier[item_brand] + shift, 0, 2)

    def attribute(options_per_leaf: list[int]) -> np.ndarray:
        n = np.array(options_per_leaf)[item_leaf]
        return np.where(n > 0, (rng.random(num_items) * np.maximum(n, 1)).astype(np.int64), -1)

    item_size = attribute([len(leaf.sizes) for leaf in _LEAVES])
    base = np.array([leaf.price for leaf in _LEAVES])[item_leaf] * _TIER_PRICE[item_tier]
    measured = np.array([_sizes_are_measured(leaf) for leaf in _LEAVES])[item_leaf]
    item_price = _price(base * rng.lognormal(0.0, 0.15, num_items), item_size, measured)
    item_color = attribute([len(_PALETTES[leaf.colors]) if leaf.colors else 0 for leaf in _LEAVES])
    item_material = attribute([len(leaf.materials) for leaf in _LEAVES])
    item_model = np.stack([rng.integers(0, len(_MODEL_LETTERS), num_items), rng.integers(1, 100, num_items)], 1)
    text_draws = rng.integers(0, 1 << 30, size=(num_items, 8))

    # shuffle rows so that the item index says nothing about the category
    perm = rng.permutation(num_items)
    return _World(
        leaf_top=leaf_top,
        leaf_weight=leaf_weight,
        leaf_next=leaf_next,
        brand_heads=brand_heads,
        brand_tails=brand_tails,
        brand_strength=brand_strength,
        brand_sells=sells,
        item_leaf=item_leaf[perm],
        item_brand=item_brand[perm],
        item_tier=item_tier[perm],
        item_price=item_price[perm],
        item_pop=item_pop[perm],
        item_size=item_size[perm],
        item_color=item_color[perm],
        item_material=item_material[perm],
        item_model=item_model[perm],
        item_text_draws=text_draws,
    )


# ---------------------------------------------------------------------------------------------------
# Users and their purchase sequences
# ---------------------------------------------------------------------------------------------------


def _global_attribute_ids(w: _World) -> tuple[np.ndarray, np.ndarray]:
    """Colour ids into _COLOR_NAMES and size ids shared across categories (same text, same id)."""
    color_of = {name: i for i, name in enumerate(_COLOR_NAMES)}
    sizes = sorted({s for leaf in _LEAVES for s in leaf.sizes})
    size_of = {s: i for i, s in enumerate(sizes)}
    color_id = np.full(len(w.item_leaf), -1, dtype=np.int64)
    size_id = np.full(len(w.item_leaf), -1, dtype=np.int64)
    for i, (leaf, c, z) in enumerate(zip(w.item_leaf, w.item_color, w.item_size)):
        if c >= 0:
            color_id[i] = color_of[_PALETTES[_LEAVES[leaf].colors][c]]
        if z >= 0:
            size_id[i] = size_of[_LEAVES[leaf].sizes[z]]
    return color_id, size_id


def _simulate(
    rng: np.random.Generator, w: _World, num_users: int, min_len: int, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat (user index, item index, timestamp) arrays of all events, each user's in time order."""
    num_items, num_leaves = len(w.item_leaf), len(w.leaf_top)
    num_brands, num_tops = len(w.brand_strength), len(_TOPS)
    items_idx = np.arange(num_items)

    # samplers: items within (leaf, brand), (leaf, tier), leaf; leaves within a top / a successor list
    leaf_brand = w.item_leaf * num_brands + w.item_brand
    by_leaf_brand = _GroupSampler(leaf_brand, items_idx, w.item_pop, num_leaves * num_brands)
    by_leaf_tier = _GroupSampler(w.item_leaf * 3 + w.item_tier, items_idx, w.item_pop, num_leaves * 3)
    by_leaf = _GroupSampler(w.item_leaf, items_idx, w.item_pop, num_leaves)
    leaves = np.arange(num_leaves)
    leaf_in_top = _GroupSampler(w.leaf_top, leaves, w.leaf_weight, num_tops)
    any_leaf = _GroupSampler(np.zeros(num_leaves, dtype=np.int64), leaves, w.leaf_weight, 1)
    succ_from = np.concatenate([np.full(len(n), i) for i, n in enumerate(w.leaf_next)])
    succ_to = np.concatenate(w.leaf_next)
    succ_w = np.concatenate([_successor_weights(len(n)) for n in w.leaf_next])
    successor = _GroupSampler(succ_from, succ_to, succ_w, num_leaves)
    global_pop = w.item_pop / np.bincount(w.item_leaf, weights=w.item_pop)[w.item_leaf] * w.leaf_weight[w.item_leaf]
    best = np.argsort(-global_pop, kind="stable")[:_NUM_BESTSELLERS]
    bestseller = _GroupSampler(np.zeros(len(best), dtype=np.int64), best, global_pop[best], 1)
    top_sells = (w.brand_sells.astype(np.int64) @ np.eye(num_tops, dtype=np.int64)[w.leaf_top]) > 0  # (B, T)
    top_of, brand_of = np.nonzero(top_sells.T)
    favourite_in_top = _GroupSampler(top_of, brand_of, w.brand_strength[brand_of], num_tops)
    consumable = np.array([leaf.consumable for leaf in _LEAVES])
    color_id, size_id = _global_attribute_ids(w)  # (N,), (N,); -1 where the item has none

    # users: preferred tops (first one strongest), a favourite brand per preferred top, loyalty, price level
    gumbel = rng.gumbel(size=(num_users, num_tops)) + np.log(np.array([_TOP_WEIGHT[t] for t in _TOPS]))
    order = np.argsort(-gumbel, axis=1)[:, :3]
    k = rng.choice([1, 2, 3], size=num_users, p=[0.4, 0.4, 0.2])
    pref = np.where(np.arange(3) < k[:, None], order, order[:, [0, 0, 1]])  # (U, 3)
    fav = favourite_in_top.sample(rng, pref.ravel()).reshape(num_users, 3)  # (U, 3)
    loyalty = rng.beta(*_LOYALTY_BETA, num_users)  # (U,) chance to buy a known brand
    level = rng.choice(3, size=num_users, p=_USER_TIER_P)  # (U,)
    fav_color = rng.choice(len(_COLOR_NAMES), size=num_users, p=_COLOR_P)  # (U,)

    extra_mean = (max_len - min_len) / 3.0
    lengths = np.minimum(min_len + rng.geometric(1.0 / (extra_mean + 1.0), num_users) - 1, max_len)  # (U,)
    seq = np.full((num_users, max_len), -1, dtype=np.int64)  # (U, T) item indices

    def draw(users: np.ndarray, leaf: np.ndarray, anchor: np.ndarray | None) -> np.ndarray:
        """One item per query in `leaf`: a loyal brand pick, else at the target price tier, else any."""
        n = len(users)
        u = rng.random(n)
        anchor_tier = w.item_tier[anchor] if anchor is not None else level[users]
        other_tier = np.where(u < _TIER_USER_P + _TIER_ANCHOR_P, anchor_tier, rng.integers(0, 3, n))
        tier = np.where(u < _TIER_USER_P, level[users], other_tier)
        brand = fav[users, rng.integers(0, 3, n)]
        if anchor is not None:
            brand = np.where(rng.random(n) < _BRAND_ANCHOR_P, w.item_brand[anchor], brand)
        out = by_leaf.sample(rng, leaf)
        g = leaf * 3 + tier
        ok = by_leaf_tier.has(g)
        out[ok] = by_leaf_tier.sample(rng, g[ok])
        g = leaf * num_brands + brand
        ok = (rng.random(n) < loyalty[users]) & by_leaf_brand.has(g)
        out[ok] = by_leaf_brand.sample(rng, g[ok])
        return out

    def pick_item(users: np.ndarray, leaf: np.ndarray, anchor: np.ndarray | None) -> np.ndarray:
        """Best of a few draws: the user's colour and the anchor's size (a 15.6" laptop -> a 15.6" bag)."""
        cands = np.stack([draw(users, leaf, anchor) for _ in range(_CANDIDATES)], axis=1)  # (n, C)
        match = (color_id[cands] == fav_color[users][:, None]).astype(np.float64)  # (n, C)
        if anchor is not None:
            anchor_size = size_id[anchor][:, None]  # (n, 1)
            match += (size_id[cands] == anchor_size) & (anchor_size >= 0)
        best = np.argmax(match, axis=1)  # first candidate on ties keeps the popularity prior
        return cands[np.arange(len(users)), best]

    users = np.arange(num_users)
    first_leaf = leaf_in_top.sample(rng, pref[users, rng.integers(0, 3, num_users)])
    seq[:, 0] = pick_item(users, first_leaf, None)
    for t in range(1, max_len):
        act = np.flatnonzero(lengths > t)
        n = len(act)
        if n == 0:
            break
        pos = np.where(rng.random(n) < _ANCHOR_LAST_P, t - 1, rng.integers(0, t, n))
        anchor = seq[act, pos]
        anchor_leaf = w.item_leaf[anchor]
        p = np.where(consumable[anchor_leaf][:, None], _MODE_P_CONSUMABLE, _MODE_P)  # (n, 5)
        mode = (rng.random(n)[:, None] > np.cumsum(p, axis=1)[:, :-1]).sum(axis=1)  # (n,) index into _MODES
        leaf = anchor_leaf.copy()  # mode "same"
        m = mode == _CHAIN
        leaf[m] = successor.sample(rng, anchor_leaf[m])
        m = mode == _PREFERRED
        leaf[m] = leaf_in_top.sample(rng, pref[act[m], rng.integers(0, 3, int(m.sum()))])
        m = mode == _RANDOM
        leaf[m] = any_leaf.sample(rng, np.zeros(int(m.sum()), dtype=np.int64))
        item = pick_item(act, leaf, anchor)
        m = mode == _TRENDING
        item[m] = bestseller.sample(rng, np.zeros(int(m.sum()), dtype=np.int64))
        for _ in range(_REDRAWS):  # durable goods are rarely bought twice: redraw repeats
            again = (seq[act, :t] == item[:, None]).any(axis=1) & ~consumable[w.item_leaf[item]]
            if not again.any():
                break
            item[again] = pick_item(act[again], leaf[again], anchor[again])
        seq[act, t] = item

    # timestamps: same order (tie), same session (minutes), or a later visit (days)
    kind = rng.random((num_users, max_len))
    gaps = np.where(
        kind < _TIE_P,
        0,
        np.where(
            kind < _TIE_P + _SESSION_P,
            1 + rng.exponential(300.0, (num_users, max_len)).astype(np.int64),
            3600 + rng.exponential(6 * 86400.0, (num_users, max_len)).astype(np.int64),
        ),
    )
    gaps[:, 0] = rng.integers(0, 365 * 86400, num_users)
    times = _EPOCH + np.cumsum(gaps, axis=1)  # (U, T)

    valid = np.arange(max_len)[None, :] < lengths[:, None]  # (U, T)
    user_of = np.broadcast_to(users[:, None], valid.shape)
    return user_of[valid], seq[valid], times[valid].astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------


def _title_case(s: str) -> str:
    return " ".join(word[:1].upper() + word[1:] for word in s.split(" "))


def _is_plural(noun: str) -> bool:
    return noun.endswith("s")  # true of every plural product noun above, and of none of the singular ones


def _article(phrase: str, noun: str) -> str:
    """'a ' / 'an ' before `phrase` (whose head noun is `noun`), '' for plurals."""
    if _is_plural(noun):
        return ""
    first = phrase.split(" ", 1)[0]
    if len(first) > 1 and first.isupper():  # an acronym is spelled out: "an SD card", "a USB charger"
        return "an " if first[0] in "AEFHILMNORSX" else "a "
    return "an " if first[:1].lower() in "aeiou" else "a "


def _pick(options: Sequence[str], draw: int) -> str:
    return options[int(draw) % len(options)]


def _render_catalog(w: _World, language: str) -> pd.DataFrame:
    zh = language == "zh"
    render = _render_zh if zh else _render_en
    brand_names = [
        (_BRAND_HEADS_ZH[h] + _BRAND_TAILS_ZH[t]) if zh else (_BRAND_HEADS[h] + _BRAND_TAILS[t])
        for h, t in zip(w.brand_heads, w.brand_tails)
    ]
    rows = []
    for i in range(len(w.item_leaf)):
        leaf = _LEAVES[w.item_leaf[i]]
        size = color = material = ""
        if w.item_size[i] >= 0:
            size = ((leaf.sizes_zh or leaf.sizes) if zh else leaf.sizes)[w.item_size[i]]
        if w.item_color[i] >= 0:
            color = _PALETTES[leaf.colors][w.item_color[i]]
            color = _COLORS_ZH[color] if zh else color
        if w.item_material[i] >= 0:
            material = leaf.materials[w.item_material[i]]
            material = _MATERIALS_ZH[material] if zh else material
        model = f"{_MODEL_LETTERS[w.item_model[i, 0]]}{w.item_model[i, 1]}"
        brand = brand_names[w.item_brand[i]]
        tier = int(w.item_tier[i])
        title, description = render(leaf, brand, tier, model, size, color, material, w.item_text_draws[i])
        rows.append((title, brand, leaf.path_zh if zh else leaf.path, description, color, size, material))
    df = pd.DataFrame(rows, columns=["title", "brand", "category", "description", "color", "size", "material"])
    df.insert(0, "item_id", [f"P{i:06d}" for i in range(len(df))])
    df.insert(5, "price", w.item_price)
    return df


def _render_en(
    leaf: _Leaf, brand: str, tier: int, model: str, size: str, color: str, material: str, d: np.ndarray
) -> tuple[str, str]:
    noun = _pick(leaf.nouns, d[0])
    line = _pick(_LINES[tier], d[1])
    adj = _pick(_ADJS[tier], d[2])
    attrs = [a for a in (size, _title_case(color), _title_case(material)) if a]
    if attrs and d[3] % 2:
        attrs = attrs[1:] + attrs[:1]
    noun_t = _title_case(noun)
    spec = ", ".join(attrs)
    titles = (
        f"{brand} {line} {noun_t} {model}" + (f", {spec}" if spec else ""),
        f"{brand} {model} {noun_t}" + (f" ({spec})" if spec else ""),
        f"{brand} {noun_t} {line}" + (f" - {' / '.join(attrs)}" if attrs else ""),
        f"{_title_case(adj)} {noun_t} by {brand}, {line} {model}" + (f", {spec}" if spec else ""),
        f"{brand} {line} {' '.join(attrs)} {noun_t}".replace("  ", " "),
    )
    title = _pick(titles, d[4])

    other = _pick(leaf.nouns, d[0] + 1)  # a synonym, for variety
    other = other if _is_plural(other) == _is_plural(noun) else noun
    verb = "are" if _is_plural(noun) else "is"
    intros = (
        f"The {brand} {noun} {model} {verb} {_article(adj, other)}{adj} {other} {leaf.use}.",
        f"Meet the {brand} {line} {model}: {_article(adj, noun)}{adj} {noun} {leaf.use}.",
        f"{brand} presents the {line} {model}, {_article(adj, noun)}{adj} {noun} {leaf.use}.",
    )
    sentences = [_pick(intros, d[5])]
    clauses = []
    if color:
        clauses.append(f"comes in {color}")
    if material:
        clauses.append(f"is made of {material}")
    if size:
        clauses.append(f"is sized {size}")
    if clauses:
        if d[5] % 2:
            sentences.append(f"Specifications: {', '.join(a for a in (size, color, material) if a)}.")
        else:
            body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
            sentences.append(f"This model {body}.")
    sentences.append(_pick(_TIER_SENTENCES[tier], d[6]))
    if d[7] % 3:  # two thirds mention a complement
        partner = _pick(_LEAVES[_LEAF_INDEX[_pick(leaf.next, d[7] >> 2)]].nouns, d[7] >> 4)
        sentences.append(
            f"Pairs well with {_article(partner, partner)}{partner}."
            if d[7] % 3 == 1
            else f"Customers often add {_article(partner, partner)}{partner}."
        )
    return title, " ".join(sentences)


def _render_zh(
    leaf: _Leaf, brand: str, tier: int, model: str, size: str, color: str, material: str, d: np.ndarray
) -> tuple[str, str]:
    noun = _pick(leaf.nouns_zh, d[0])
    line = _pick(_LINES_ZH[tier], d[1])
    adj = _pick(_ADJS_ZH[tier], d[2])
    attrs = [a for a in (size, color, material) if a]
    if attrs and d[3] % 2:
        attrs = attrs[1:] + attrs[:1]
    spec = " ".join(attrs)
    titles = (
        f"{brand}{noun}{line} {model}" + (f" {spec}" if spec else ""),
        f"{brand} {model} {adj}{noun}" + (f"（{'，'.join(attrs)}）" if attrs else ""),
        f"【{brand}】{noun} {line} {spec}".rstrip(),
        f"{brand}{line}{noun} {model}" + (f" {spec}" if spec else ""),
        f"{adj}{noun} {brand} {model}" + (f" {spec}" if spec else ""),
    )
    title = _pick(titles, d[4])

    intros = (
        f"{brand}{line}{noun}{model}，{adj}之选，{leaf.use_zh}。",
        f"这款{brand}{noun}（{model}）{leaf.use_zh}，是{adj}{noun}。",
        f"{brand}推出{line}{model}，{adj}{noun}，{leaf.use_zh}。",
    )
    sentences = [_pick(intros, d[5])]
    clauses = []
    if color:
        clauses.append(f"颜色为{color}")
    if material:
        clauses.append(f"采用{material}材质")
    if size:
        clauses.append(f"规格{size}")
    if clauses:
        sentences.append(f"规格参数：{'，'.join(attrs)}。" if d[5] % 2 else "本款" + "，".join(clauses) + "。")
    sentences.append(_pick(_TIER_SENTENCES_ZH[tier], d[6]))
    if d[7] % 3:
        partner = _pick(_LEAVES[_LEAF_INDEX[_pick(leaf.next, d[7] >> 2)]].nouns_zh, d[7] >> 4)
        sentences.append(f"搭配{partner}使用效果更佳。" if d[7] % 3 == 1 else f"很多顾客会同时选购{partner}。")
    return title, "".join(sentences)
